"""Typed configuration: one dataclass per stage, nested under SweepConfig, one validation path.

Every config is a plain dataclass of simple types (int, float, str, bool, Literal, Optional,
nested configs and lists of them). ``Config.from_dict`` builds one from YAML/JSON data and
``Config.check`` walks the tree, collecting *every* problem with its dotted field path before
raising a single ``ConfigError`` — e.g. ``runs[3].model.d_model: must be divisible by n_head
(got 500, 8)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, TypeVar

from scaling.errors import ConfigError, WriteError

__all__ = [
    "Config",
    "Conventions",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "SweepPoint",
    "Lineage",
    "BranchPoint",
    "BranchGroup",
    "SlurmConfig",
    "LaunchConfig",
    "SweepConfig",
    "FINAL_EVAL_TOKENS",
    "DIGEST_DEFAULTS",
    "atomic_write",
    "atomic_write_text",
    "writes_to",
    "name_problem",
    "parse_dotlist",
    "wsd_decay_start",
    "trunk_shares",
    "branch_costs",
]

C = TypeVar("C", bound="Config")

ParamsConvention = Literal["total", "non-embedding"]
FlopsFormula = Literal["6nd", "6nd+attn"]


# What each write failure means for the user, and what to do about it.
_WRITE_FIXES = {
    errno.ENOSPC: "the disk is full; free space there (df -h shows it) or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "no permission to write there; fix the folder's permissions or write elsewhere",
    errno.EPERM: "no permission to write there; fix the folder's permissions or write elsewhere",
    errno.EFBIG: "the file is over the size limit (ulimit -f) or the file system's; raise it or write elsewhere",
}


@contextlib.contextmanager
def writes_to(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OSError raised inside the block into a one-line ``WriteError`` naming ``path``, what
    happened and the fix (the CLI prints it and exits 2). Wrap only writing in it: a read error
    reported as a write error would send the user to the wrong file."""
    try:
        yield
    except OSError as e:
        fix = _WRITE_FIXES.get(e.errno or 0, "fix that, or write elsewhere")
        raise WriteError(f"{path}: cannot write ({e.strerror or e}): {fix}; then run the same command again") from None


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temp file in ``path``'s folder, fsync it, and rename it to ``path``.

    A reader (or a crash) never sees a half-written file: the rename is atomic on POSIX, and the
    fsync first means a power loss cannot leave the rename on disk without the data. A failed
    write (a full disk) leaves the old file as it was and raises ``WriteError`` (``writes_to``).
    """
    path = Path(path)
    with writes_to(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp creates the file 0600; give it the mode a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """``atomic_write`` of ``text`` as UTF-8."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def name_problem(name: str | None) -> str | None:
    """Why ``name`` cannot be a run or sweep name, or None when it can.

    A name becomes one folder (``results/<sweep>/<run>-<id>/``, ``results/runs/<name>/``), so it
    must be one path component: not empty, no separator, not ``.`` or ``..``, no control character.
    One rule for every entry point (train, launch, plan, the Python API), checked before anything
    is written, so that no name can put files outside the results folder.
    """
    if not name:
        return "must be a non-empty name"
    if "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        return f"{name!r} must be one folder name (no '/' or '\\', not '.' or '..', no control characters)"
    return None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Convert ``value`` to type ``tp``; append ``path: message`` to ``errors`` on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], path, errors)
    if origin is Literal:
        # YAML 1.1 reads on/off/yes/no as booleans; map them back where the field means "on"/"off".
        if isinstance(value, bool) and "on" in args and "off" in args:
            value = "on" if value else "off"
        if value in args:
            return value
        errors.append(f"{path}: must be one of {', '.join(repr(a) for a in args)} (got {value!r})")
        return None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: must be a list (got {value!r})")
            return []
        return [_coerce(v, args[0], f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: must be a mapping (got {value!r})")
            return {}
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            errors.append(f"{path}: must be a mapping of {tp.__name__} fields (got {value!r})")
            return None
        return tp._from_dict(value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # YAML and JSON write 1e6 as a float; accept whole floats so `steps: 1e6` works.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML (YAML 1.1) reads `1e18` as a string; accept it as the number it means.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # Refused here, where it enters, so no field's own check can miss one (inf > 0 holds).
            if not math.isfinite(number):
                errors.append(f"{path}: must be a finite number (got {value!r})")
                return None
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"unsupported config field type {tp!r} at {path}")
    errors.append(f"{path}: must be {_type_name(tp)} (got {value!r})")
    return None


# The default cap of train.final_eval_tokens: 2**23 ≈ 8.4M tokens (all of val when that is smaller).
# Precision, measured on Python source (whole files of every kind: a deliberately mixed corpus):
# the committed results/chinchilla_small runs (GPT-2 BPE, context 1024) had a standard error of
# 1.5-2.7% of their loss over 262,144 val tokens in 16 batches of consecutive windows, so 0.27-0.5%
# at 2**23 tokens (as 1/√tokens); <= 0.2% on that corpus takes ~30M val tokens (a larger
# --val-fraction and this field). The difference of two runs on the same windows is far more
# precise: 0.002 nats paired against 0.04 unpaired (scaling.evaluation, benchmarks/eval_noise.py).
# Cost: a forward pass is ~1/3 of a training step's FLOPs (2N against 6N per token), so the eval
# costs what training on 2.8M tokens does: under 10% of any run with D/N >= 5 at C >= 1e15 FLOPs
# (such a run trains on >= 5·√(C/30) = 29M tokens).
FINAL_EVAL_TOKENS = 2**23

# Fields added after sweeps were launched (and results committed), with their defaults. A run's id
# is its name plus a digest of its config; a new field in the digest would give every run of an
# old sweep a new id, so a relaunch would train them all again instead of finding them done.
DIGEST_DEFAULTS: dict[str, Any] = {"train.final_eval_tokens": FINAL_EVAL_TOKENS}


@dataclass
class Config:
    """Base of every config: dict/YAML round-trip, dotted overrides, one validation walk."""

    def validate(self) -> list[str]:
        """Return this object's own problems as ``"field: message"`` strings (no recursion)."""
        return []

    def problems(self, prefix: str = "") -> list[str]:
        """Every problem in this config and its nested configs, with dotted field paths."""
        out = [f"{prefix}{p}" if prefix else p for p in self.validate()]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, Config):
                    sub = f"{prefix}{f.name}" + (f"[{i}]" if isinstance(value, list) else "")
                    out.extend(item.problems(sub + "."))
        return out

    def check(self: C) -> C:
        """Raise one ``ConfigError`` listing every problem; return ``self`` when valid."""
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    @classmethod
    def _from_dict(cls: type[C], data: dict[str, Any], prefix: str, errors: list[str]) -> C:
        hints = typing.get_type_hints(cls)
        names = {f.name: f for f in dataclasses.fields(cls) if f.init}
        dot = f"{prefix}." if prefix else ""
        for key in data:
            if key not in names:
                errors.append(
                    f"{dot}{key}: unknown field of {cls.__name__} (valid: {', '.join(sorted(names))})"
                )
        kwargs: dict[str, Any] = {}
        for name, f in names.items():
            if name in data:
                kwargs[name] = _coerce(data[name], hints[name], f"{dot}{name}", errors)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{dot}{name}: required field of {cls.__name__} is missing")
                kwargs[name] = None
        return cls(**kwargs)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build and check a config from plain data; unknown or mistyped fields are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of fields (got {type(data).__name__})")
        errors: list[str] = []
        obj = cls._from_dict(data, "", errors)
        if errors:
            raise ConfigError("; ".join(errors))
        return obj.check()

    @classmethod
    def from_yaml(cls: type[C], path: str | os.PathLike[str]) -> C:
        """Load a YAML file; a missing or unparsable file is a ``ConfigError`` naming it."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such file (give the path of a YAML spec)")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{p}: not valid YAML ({where}{problem}); fix the file there") from None
        try:
            return cls.from_dict(data or {})
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe nested dict of every field (for recording the config with results)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=100)

    def save_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the config as YAML atomically."""
        atomic_write_text(path, self.to_yaml())

    def merge(self: C, dotlist: list[str]) -> C:
        """Return a new config with ``a.b=value`` overrides applied (values parsed as YAML).

        An unknown key is an error, never a silent no-op.
        """
        data = self.to_dict()
        for key, value in parse_dotlist(dotlist):
            node: Any = data
            parts = key.split(".")
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                if isinstance(node, list):
                    if not part.isdigit() or int(part) >= len(node):
                        raise ConfigError(f"{key}: index {part!r} is out of range")
                    idx: Any = int(part)
                elif isinstance(node, dict) and part in node:
                    idx = part
                else:
                    raise ConfigError(f"{key}: unknown field {'.'.join(parts[: i + 1])!r}")
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
        return type(self).from_dict(data)

    def digest(self) -> str:
        """A stable 10-hex-digit id of this config's contents (same config → same id).

        A field of ``DIGEST_DEFAULTS`` at its default is left out, so ids made before it existed
        stay the same.
        """
        data = self.to_dict()
        for path, default in DIGEST_DEFAULTS.items():
            *parents, leaf = path.split(".")
            node: Any = data
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node and node[leaf] == default:
                del node[leaf]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def parse_dotlist(dotlist: list[str]) -> list[tuple[str, Any]]:
    """Split ``["train.lr_peak=3e-4", ...]`` into ``(key, value)`` with YAML-parsed values."""
    import yaml

    out = []
    for item in dotlist:
        if "=" not in item:
            raise ConfigError(f"{item!r}: an override must look like field.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _positive(obj: Config, *names: str) -> list[str]:
    return [f"{n}: must be > 0 (got {getattr(obj, n)!r})" for n in names if not getattr(obj, n) > 0]


def wsd_decay_start(steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """First update of the decay phase of a WSD run of ``steps`` updates.

    The last ``round(decay_fraction · steps)`` updates (at least one) decay, never before warmup
    ends. Before this step a WSD run takes exactly the updates of a constant-LR run with the same
    warmup and peak, so a cooldown branch can start from such a trunk's checkpoint here
    (Hägele et al. 2024, Sec. 3).
    """
    return max(warmup_steps, steps - max(1, round(decay_fraction * steps)))


def trunk_shares(trunk_steps: int, starts: list[int]) -> list[float]:
    """Each branch's share of its trunk's ``trunk_steps``, given the step each branch starts at.

    The trunk segment between consecutive branch points is split equally among the branches
    that start at or after its end (each of them needed it); steps after the last branch point
    are split among all. The shares sum to ``trunk_steps``, so branch costs add up to the sweep's.
    """
    bounds = sorted(set(starts))
    share_at, acc, prev = {}, 0.0, 0
    for b in bounds:
        acc += (b - prev) / sum(s >= b for s in starts)
        share_at[b], prev = acc, b
    tail = (trunk_steps - prev) / len(starts)
    return [share_at[s] + tail for s in starts]


@dataclass
class Conventions(Config):
    """What N counts and what C counts; recorded with every run and fit.

    ``params``: "total" counts every parameter (Hoffmann et al. 2022); "non-embedding" drops
    token and position embeddings (Kaplan et al. 2020). ``flops``: "6nd" is C = 6·N·D;
    "6nd+attn" adds the attention score/value matmuls, 12·L·d·T per token (PaLM, App. B).
    """

    params: ParamsConvention = "total"
    flops: FlopsFormula = "6nd"


@dataclass
class ModelConfig(Config):
    """A GPT-2-style decoder's shape."""

    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    context: int
    vocab_size: int
    tied_embeddings: bool = True
    bias: bool = True
    grad_checkpointing: bool = False

    def validate(self) -> list[str]:
        out = _positive(self, "n_layer", "d_model", "n_head", "d_ff", "context", "vocab_size")
        if not out and self.d_model % self.n_head:
            out.append(
                f"d_model: must be divisible by n_head (got {self.d_model}, {self.n_head})"
            )
        return out


@dataclass
class DataConfig(Config):
    """Where a run's tokens come from: a folder holding train.bin, val.bin and meta.json."""

    path: str = "data/pysrc"

    def validate(self) -> list[str]:
        return [] if self.path else ["path: must name a prepared data folder (scaling prepare ...)"]


@dataclass
class TrainConfig(Config):
    """Optimizer, schedule, precision and bookkeeping shared by every run of a sweep.

    Defaults follow GPT-3/Chinchilla practice: AdamW (0.9, 0.95, 1e-8), weight decay 0.1 on
    matrices only, clip 1.0, cosine decay to 10% of peak over exactly the run's length.
    """

    batch_size: int = 32
    micro_batch_size: int = 32
    lr_peak: float = 6e-4
    lr_min_ratio: float = 0.1
    warmup_steps: int = 100
    # "wsd-branch" is a sweep setting: one constant-LR trunk per size, cooldown branches off it
    # (SweepConfig.branches); each run it resolves to trains "constant" or "wsd".
    schedule: Literal["cosine", "wsd", "constant", "wsd-branch"] = "cosine"
    decay_fraction: float = 0.2
    decay_shape: Literal["linear", "1-sqrt", "cosine"] = "linear"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # Interim evals (every eval_interval steps: the loss curve) score the first eval_tokens of
    # val; the final eval scores the first final_eval_tokens (all of val when it is smaller), keeps
    # every window's loss in eval.parquet and gives the run's val_loss, its standard error and the
    # paired comparison of runs on the same data folder (scaling.evaluation). See
    # FINAL_EVAL_TOKENS for why 2**23.
    eval_interval: int = 100
    eval_tokens: int = 262144
    final_eval_tokens: int = FINAL_EVAL_TOKENS
    log_interval: int = 10
    checkpoint_interval: int = 500
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"
    seed: int = 1337
    max_epochs: float = 4.0
    # metrics.parquet is rewritten every flush_interval steps (and at checkpoints and the end),
    # so a crash loses at most that many steps of rows.
    flush_interval: int = 100
    # A step's loss above mean + spike_sigma·std of the previous spike_window steps is logged
    # as an event (the run goes on).
    spike_sigma: float = 3.0
    spike_window: int = 100
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "max-autotune"] = "default"

    def validate(self) -> list[str]:
        out = _positive(self, "batch_size", "micro_batch_size", "lr_peak", "eps", "eval_interval",
                        "eval_tokens", "final_eval_tokens", "log_interval", "checkpoint_interval", "max_epochs",
                        "flush_interval", "spike_sigma", "spike_window")
        if not out and self.batch_size % self.micro_batch_size:
            out.append(
                f"batch_size: must be divisible by micro_batch_size "
                f"(got {self.batch_size}, {self.micro_batch_size})"
            )
        if not 0 <= self.lr_min_ratio <= 1:
            out.append(f"lr_min_ratio: must be in [0, 1] (got {self.lr_min_ratio})")
        if not 0 < self.decay_fraction < 1:
            out.append(f"decay_fraction: must be in (0, 1) (got {self.decay_fraction})")
        if self.warmup_steps < 0:
            out.append(f"warmup_steps: must be >= 0 (got {self.warmup_steps})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                out.append(f"{name}: must be in [0, 1) (got {getattr(self, name)})")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            out.append(f"device: must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:  # NaN too
                out.append(f"{name}: must be >= 0 (got {getattr(self, name)!r})")
        return out


@dataclass
class Lineage(Config):
    """A run's place in a WSD cooldown-branching sweep (``train.schedule: wsd-branch``).

    A trunk (``trunk`` null) keeps its checkpoint at every step of ``keep_steps`` as
    ``checkpoint_{step:06d}.pt``. A branch (``trunk`` = the trunk's run id, its folder beside the
    branch's own) starts from that checkpoint at ``start_step`` and trains only its cooldown.
    """

    trunk: str | None = None
    start_step: int | None = None
    keep_steps: list[int] = field(default_factory=list)

    def validate(self) -> list[str]:
        out = []
        if (self.trunk is None) != (self.start_step is None):
            out.append("trunk, start_step: a branch gives both, a trunk neither "
                       f"(got {self.trunk!r}, {self.start_step!r})")
        if self.start_step is not None and self.start_step < 1:
            out.append(f"start_step: must be >= 1 (got {self.start_step})")
        if any(s is None or s < 1 for s in self.keep_steps):
            out.append(f"keep_steps: must be steps >= 1 (got {self.keep_steps})")
        return out


@dataclass
class RunConfig(Config):
    """Everything one training run needs: shape, data, trainer settings and its horizon.

    The horizon is ``steps`` optimizer steps of ``train.batch_size × model.context`` tokens,
    so the token count D is exact and whole.
    """

    name: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    steps: int
    conventions: Conventions = field(default_factory=Conventions)
    budget_flops: float | None = None
    lineage: Lineage | None = None

    @property
    def tokens(self) -> int:
        """D: tokens this run trains on."""
        return self.steps * self.train.batch_size * self.model.context

    def validate(self) -> list[str]:
        out = _positive(self, "steps")
        if (problem := name_problem(self.name)) is not None:
            out.append(f"name: {problem}")
        if self.train.schedule == "wsd-branch":
            out.append("train.schedule: wsd-branch is a sweep setting (SweepConfig.branches); a single run "
                       "uses wsd")
        if self.lineage is not None and self.lineage.start_step is not None and self.lineage.start_step >= self.steps:
            out.append(f"lineage.start_step: must be < steps (got {self.lineage.start_step}, {self.steps})")
        return out

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.lineage is None:
            # A run outside a branching sweep keeps the dict (so the digest and run id) it had
            # before lineage existed, and its results folder stays its own.
            del out["lineage"]
        return out


@dataclass
class SweepPoint(Config):
    """One (shape, tokens) point of a sweep, with the per-size settings the planner chose."""

    name: str
    model: ModelConfig
    steps: int
    batch_size: int
    micro_batch_size: int
    lr_peak: float
    warmup_steps: int
    budget_flops: float | None = None

    def validate(self) -> list[str]:
        out = _positive(self, "steps", "batch_size", "micro_batch_size", "lr_peak")
        if not out and self.batch_size % self.micro_batch_size:
            out.append(
                f"batch_size: must be divisible by micro_batch_size "
                f"(got {self.batch_size}, {self.micro_batch_size})"
            )
        if self.warmup_steps < 0 or (self.steps > 0 and self.warmup_steps >= self.steps):
            out.append(f"warmup_steps: must be in [0, steps) (got {self.warmup_steps}, {self.steps})")
        return out


@dataclass
class BranchPoint(Config):
    """One (N, D) point of a branching sweep: the branch that ends at ``tokens``."""

    tokens: int
    name: str | None = None  # default: <group name>_D<tokens>
    budget_flops: float | None = None

    def validate(self) -> list[str]:
        return _positive(self, "tokens")


@dataclass
class BranchGroup(Config):
    """One model size of a ``wsd-branch`` sweep: a stable trunk and the cooldown branches off it.

    The trunk trains at ``lr_peak`` after warmup up to ``trunk_tokens`` (default: the last
    branch point). The branch of ``points[j]`` is the WSD run of that many tokens whose last
    ``cooldown_fraction`` decays with ``cooldown_shape``: it starts from the trunk's checkpoint
    where that decay begins and trains only the cooldown (Hägele et al. 2024).
    """

    name: str
    model: ModelConfig
    batch_size: int
    micro_batch_size: int
    lr_peak: float
    warmup_steps: int
    points: list[BranchPoint]
    cooldown_fraction: float = 0.2
    # 1-sqrt: the shape Hägele et al. 2024 (Sec. 3) find best, matching cosine at 20% cooldown.
    cooldown_shape: Literal["linear", "1-sqrt", "cosine"] = "1-sqrt"
    trunk_tokens: int | None = None

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.model.context

    @property
    def trunk_name(self) -> str:
        return f"{self.name}_trunk"

    def point_name(self, j: int) -> str:
        return self.points[j].name or f"{self.name}_D{self.points[j].tokens}"

    def steps(self, j: int) -> int:
        """Optimizer steps of branch ``j`` (of a WSD run of its tokens, from step 0)."""
        return self.points[j].tokens // self.batch_tokens

    def start_step(self, j: int) -> int:
        """The trunk step branch ``j`` starts from: where its cooldown begins."""
        return wsd_decay_start(self.steps(j), self.warmup_steps, self.cooldown_fraction)

    @property
    def trunk_steps(self) -> int:
        if self.trunk_tokens is not None:
            return self.trunk_tokens // self.batch_tokens
        return max(self.start_step(j) for j in range(len(self.points)))

    def validate(self) -> list[str]:
        out = _positive(self, "batch_size", "micro_batch_size", "lr_peak")
        if not self.name:
            out.append("name: must name the model size, e.g. 12x768")
        if not out and self.batch_size % self.micro_batch_size:
            out.append(f"batch_size: must be divisible by micro_batch_size "
                       f"(got {self.batch_size}, {self.micro_batch_size})")
        if self.warmup_steps < 0:
            out.append(f"warmup_steps: must be >= 0 (got {self.warmup_steps})")
        if not 0 < self.cooldown_fraction < 1:
            out.append(f"cooldown_fraction: must be in (0, 1) (got {self.cooldown_fraction})")
        if not self.points:
            out.append("points: must list at least one token count to branch at")
        if out or self.model.context <= 0:  # the checks below need valid numbers
            return out
        bt = self.batch_tokens
        tokens = [p.tokens for p in self.points]
        dup = sorted({t for t in tokens if tokens.count(t) > 1})
        if dup:
            out.append(f"points: token counts must be unique (repeated: {', '.join(map(str, dup))})")
        if self.trunk_tokens is not None and (self.trunk_tokens <= 0 or self.trunk_tokens % bt):
            out.append(f"trunk_tokens: must be a positive whole number of steps of batch_size × model.context "
                       f"= {bt:,} tokens (got {self.trunk_tokens:,})")
            return out
        for j, t in enumerate(tokens):
            if t <= 0:
                continue  # BranchPoint.validate names it
            if t % bt:
                out.append(f"points[{j}].tokens: must be a whole number of steps of batch_size × model.context "
                           f"= {bt:,} tokens (got {t:,})")
            elif self.start_step(j) <= self.warmup_steps:
                out.append(f"points[{j}].tokens: {t:,} tokens = {self.steps(j)} steps leave no stable phase: "
                           f"the cooldown would start at step {self.start_step(j)}, not after warmup_steps "
                           f"{self.warmup_steps}; use more tokens or fewer warmup steps")
            elif self.trunk_tokens is not None and self.start_step(j) * bt > self.trunk_tokens:
                out.append(f"points[{j}].tokens: {t:,} tokens branch off the trunk at {self.start_step(j) * bt:,}, "
                           f"beyond trunk_tokens {self.trunk_tokens:,}; raise trunk_tokens or drop the point")
        return out


def branch_costs(trunk: RunConfig, branches: list[RunConfig]) -> list[float]:
    """Tokens each branch of ``trunk`` actually costs: its ``trunk_shares`` share plus its cooldown."""
    starts = []
    for b in branches:
        assert b.lineage is not None and b.lineage.start_step is not None, f"{b.name} is not a branch"
        starts.append(b.lineage.start_step)
    shares = trunk_shares(trunk.steps, starts)
    return [(share + b.steps - start) * b.train.batch_size * b.model.context
            for share, start, b in zip(shares, starts, branches)]


@dataclass
class SlurmConfig(Config):
    """SLURM settings for ``--executor slurm`` (submitit job arrays)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 4
    array_parallelism: int = 64
    time_margin: float = 1.5
    min_time_min: int = 10
    max_requeues: int = 3
    # submitit's --signal=USR2@delay: seconds before the time limit at which the run is told to
    # checkpoint (SLURM may send it up to 60 s earlier; slurm/README.md).
    signal_delay_s: int = 90

    def validate(self) -> list[str]:
        out = _positive(self, "cpus_per_task", "array_parallelism", "time_margin", "min_time_min",
                        "signal_delay_s")
        if self.gpus_per_task < 0 or self.max_requeues < 0:
            out.append("gpus_per_task, max_requeues: must be >= 0")
        return out


@dataclass
class LaunchConfig(Config):
    """How a sweep is executed: locally over the GPUs found, or through SLURM."""

    executor: Literal["local", "slurm"] = "local"
    per_gpu: int = 0
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self) -> list[str]:
        return [] if self.per_gpu >= 0 else [f"per_gpu: must be >= 0, 0 = auto (got {self.per_gpu})"]


@dataclass
class SweepConfig(Config):
    """A launchable sweep: shared data and trainer settings plus one entry per run.

    ``plan`` records what the planner was asked (budgets, GPU, rules) for provenance only.
    """

    name: str
    data: DataConfig
    runs: list[SweepPoint] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    conventions: Conventions = field(default_factory=Conventions)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    plan: dict[str, Any] = field(default_factory=dict)
    # train.schedule: wsd-branch sweeps list their points here, one group per model size.
    branches: list[BranchGroup] = field(default_factory=list)

    def validate(self) -> list[str]:
        out = []
        if not self.runs and not self.branches:
            out.append("runs: must list at least one run (scaling plan --out writes them)")
        branching = self.train.schedule == "wsd-branch"
        if branching and self.runs:
            out.append("runs: a train.schedule: wsd-branch sweep lists its points under branches "
                       "(scaling plan --branching writes them)")
        if self.branches and not branching:
            out.append(f"branches: need train.schedule: wsd-branch (got {self.train.schedule!r})")
        names = [r.name for r in self.runs if r is not None]
        names += [n for g in self.branches if g is not None and g.points
                  for n in (g.trunk_name, *map(g.point_name, range(len(g.points))))]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            out.append(f"runs: run names must be unique (repeated: {', '.join(dup)})")
        # Names become folders (results/<sweep>/<run>-<id>/): one path component each.
        for field_, name in (("name", self.name), *(("runs", n) for n in names)):
            if (problem := name_problem(name)) is not None:
                out.append(f"{field_}: {problem}")
        return out

    def merge(self, dotlist: list[str]) -> SweepConfig:
        """``Config.merge``, refusing ``train.*`` keys that every run (or branch group) sets for
        itself: applied to ``train`` they would change nothing, and a no-op is never silent."""
        per_run = {"batch_size", "micro_batch_size", "lr_peak", "warmup_steps"}
        per_group = per_run | ({"decay_fraction", "decay_shape"} if self.branches else set())
        for key, _ in parse_dotlist(dotlist):
            section, _, name = key.partition(".")
            if section == "train" and name in per_group:
                where = {"decay_fraction": "branches.N.cooldown_fraction", "decay_shape": "branches.N.cooldown_shape"}
                fix = where.get(name, f"branches.N.{name}" if self.branches else f"runs.N.{name}")
                raise ConfigError(f"{key}: each {'size' if self.branches else 'run'} of the sweep sets its own; "
                                  f"override {fix} instead")
        return super().merge(dotlist)

    def resolve(self, i: int) -> RunConfig:
        """The full RunConfig of run ``i``: shared settings with the point's values on top."""
        p = self.runs[i]
        train = dataclasses.replace(
            self.train,
            batch_size=p.batch_size,
            micro_batch_size=p.micro_batch_size,
            lr_peak=p.lr_peak,
            warmup_steps=p.warmup_steps,
        )
        return RunConfig(
            name=p.name,
            model=p.model,
            data=self.data,
            train=train,
            steps=p.steps,
            conventions=self.conventions,
            budget_flops=p.budget_flops,
        ).check()

    def resolve_trunk(self, g: int) -> RunConfig:
        """The RunConfig of branch group ``g``'s trunk: constant LR after warmup, keeping its
        checkpoint at every branch point. The decay fields stay the sweep's (a constant schedule
        ignores them), so trying another cooldown shape reuses the same trunk."""
        grp = self.branches[g]
        starts = sorted({grp.start_step(j) for j in range(len(grp.points))})
        train = dataclasses.replace(self._group_train(grp), schedule="constant",
                                    decay_fraction=self.train.decay_fraction, decay_shape=self.train.decay_shape)
        return RunConfig(name=grp.trunk_name, model=grp.model, data=self.data, train=train, steps=grp.trunk_steps,
                         conventions=self.conventions, lineage=Lineage(keep_steps=starts)).check()

    def resolve_branch(self, g: int, j: int, trunk_id: str) -> RunConfig:
        """The RunConfig of point ``j`` of branch group ``g``: the WSD run of its tokens, which
        starts from trunk ``trunk_id``'s checkpoint where its cooldown begins."""
        grp = self.branches[g]
        return RunConfig(name=grp.point_name(j), model=grp.model, data=self.data, train=self._group_train(grp),
                         steps=grp.steps(j), conventions=self.conventions, budget_flops=grp.points[j].budget_flops,
                         lineage=Lineage(trunk=trunk_id, start_step=grp.start_step(j))).check()

    def _group_train(self, grp: BranchGroup) -> TrainConfig:
        return dataclasses.replace(self.train, batch_size=grp.batch_size, micro_batch_size=grp.micro_batch_size,
                                   lr_peak=grp.lr_peak, warmup_steps=grp.warmup_steps, schedule="wsd",
                                   decay_fraction=grp.cooldown_fraction, decay_shape=grp.cooldown_shape)
