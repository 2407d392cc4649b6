"""Checkpoints of a run: atomic save and load, RNG state, kept branch-point copies, and the checks
that a checkpoint resumes (or starts, for a WSD branch) exactly the run it is loaded into.

A checkpoint is one ``torch.save`` dict of plain types and tensors (model, optimizer, scaler,
step, loop state, per-rank loader positions and RNG states, the config dict and data meta), so
``torch.load(..., weights_only=True)`` reads it. ``scaling.train`` writes and resumes it;
``load_model`` gives back its model.

Every checkpoint has its sha256 beside it (``checkpoint.pt.sha256``, JSON), recorded while it is
written and checked before every load: a file that changed on disk since (a flipped bit, a bad
copy) is refused with the way out, never resumed from. A checkpoint without that file (written
before checksums existed, or its checksum deleted by hand) loads unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from scaling.config import RunConfig, atomic_write, atomic_write_text
from scaling.errors import TrainError
from scaling.model import GPT
from scaling.results import branch_start_path, checksum_path, kept_checkpoint_path
from scaling.schedule import lr_at

__all__ = ["load_model", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "keep_checkpoint",
           "rng_state", "set_rng_state", "check_same_run", "branch_start", "check_branch_start"]

CHECKPOINT = "checkpoint.pt"
# Config fields that may change between an interrupted run and its resumption: they steer
# bookkeeping and speed, not the training losses. (final_eval_tokens sizes only the eval after the
# last update, recorded with its result; runs checkpointed before the field existed resume.)
_RESUMABLE_CHANGES = ("name", "data.path", "train.log_interval", "train.checkpoint_interval",
                      "train.flush_interval", "train.compile", "train.compile_mode", "train.device",
                      "train.final_eval_tokens")


def rng_state() -> dict[str, Any]:
    """Every RNG the process may use, as plain types and tensors (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # This process's device only: get_rng_state_all() would open a context on every GPU.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())  # map_location may have put it on the GPU
    if state["cuda"] is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])


class _HashingWriter:
    """A binary file that hashes what is written through it (torch.save writes sequentially).

    It keeps the OSError of a failed write: torch.save's zip writer answers one by raising a
    RuntimeError of its own ("unexpected pos ..."), which says nothing of a full disk."""

    def __init__(self, f: Any, digest: Any) -> None:
        self.f, self.digest = f, digest
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


# Digests a checksum file still accepts besides the newest: those of the checkpoints it replaced.
# One is enough unless the process dies between recording a checksum and renaming its checkpoint
# into place several times in a row.
_PREVIOUS_KEPT = 3


def _recorded(path: Path) -> list[str]:
    """The digests ``path``'s checksum file accepts (newest first); [] when it has none."""
    sums = checksum_path(path)
    try:
        record = json.loads(sums.read_text())
        return [record["sha256"], *record.get("previous", [])]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        raise TrainError(f"{sums}: unreadable checksum file; delete {path} and {sums.name} to restart the run "
                         f"(or restore both from a copy)") from None


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save through ``atomic_write``, so a crash never leaves half a checkpoint, hashing the
    bytes on their way to disk. The checksum is recorded before the checkpoint is renamed into
    place and still accepts the one it replaces, so a crash between the two renames leaves a
    pair that checks."""

    def write(f: Any) -> None:
        digest = hashlib.sha256()
        writer = _HashingWriter(f, digest)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None  # atomic_write names the file and the fix
            raise
        previous = _recorded(path)[:_PREVIOUS_KEPT] if path.is_file() else []
        atomic_write_text(checksum_path(path), json.dumps({"sha256": digest.hexdigest(), "previous": previous}) + "\n")

    atomic_write(path, write)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path) -> None:
    """Check ``path`` against its recorded sha256 (no checksum file: nothing to check).

    Raises
    ------
    TrainError
        The file changed since it was written; the message names the way out.
    """
    accepted = _recorded(path)
    if not accepted or _sha256(path) in accepted:
        return
    sums = checksum_path(path)
    kept = sorted(p for p in path.parent.glob("checkpoint_*.pt") if p != path and checksum_path(p).is_file())
    earlier = (f", or resume from the earlier {kept[-1].name}: copy it and its {checksum_path(kept[-1]).name} "
               f"over {path.name} and {sums.name}") if kept else ""
    raise TrainError(f"{path}: corrupted (its sha256 is not the one recorded in {sums.name} when it was saved); "
                     f"restart the run: delete {path.name} and {sums.name} in {path.parent}{earlier}")


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, after ``verify_checkpoint``.

    Raises
    ------
    TrainError
        Corrupted (checksum mismatch) or unreadable.
    """
    verify_checkpoint(path)
    try:
        # weights_only: a checkpoint is tensors and plain data, so loading runs no pickled code.
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise TrainError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); "
                         f"delete it to restart the run") from None


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_same_run(saved: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    """A checkpoint only resumes the run it came from (bookkeeping fields may differ)."""
    old, new = dict(_flatten(saved)), dict(_flatten(cfg.to_dict()))
    diff = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES]
    if diff:
        raise TrainError(f"{path} belongs to a run with different {', '.join(diff)}; "
                         f"train into a new --out folder or delete {path.parent} to restart")


# What a cooldown branch may change from its trunk: its horizon and what happens after the branch
# point. Everything else (shape, data, optimizer, batch, seed) must match for the branch to be
# the run it names.
_BRANCH_CHANGES = ("name", "steps", "budget_flops", "train.schedule", "train.decay_fraction", "train.decay_shape",
                   "lineage.trunk", "lineage.start_step", "lineage.keep_steps")


def branch_start(cfg: RunConfig, out_dir: Path) -> Path | None:
    """The trunk checkpoint a branch starts from; None for a run that is no branch.

    Raises
    ------
    TrainError
        The trunk has not kept that checkpoint (yet).
    """
    path = branch_start_path(cfg, out_dir)
    if path is not None and not path.is_file():
        raise TrainError(f"lineage.trunk: {path} is missing: the trunk has not kept this checkpoint yet; "
                         f"launch the sweep (a branch waits for its trunk) or train the trunk first")
    return path


def check_branch_start(saved: dict[str, Any], cfg: RunConfig, path: Path, step: int) -> None:
    """A branch starts only from a trunk of the same run whose updates up to ``step`` are the
    branch's own: same settings but the horizon and decay, and the same LR at every step."""
    assert cfg.lineage is not None and step == cfg.lineage.start_step, (step, cfg.lineage)
    old, new = dict(_flatten(saved)), dict(_flatten(cfg.to_dict()))
    allowed = _RESUMABLE_CHANGES + _BRANCH_CHANGES
    diff = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k not in allowed]
    trunk = RunConfig.from_dict(saved)
    if not diff and any(lr_at(s, trunk) != lr_at(s, cfg) for s in range(step)):
        diff = ["learning rate before the branch point"]
    if diff:
        raise TrainError(f"{path} cannot start this branch: its trunk differs in {', '.join(diff)}; "
                         f"delete {path.parent} and relaunch to retrain the trunk")


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s bytes, atomically: a hard link (no copy) where the file system has them.

    A link is safe because checkpoints and checksums are only ever replaced by a rename, never
    rewritten in place: ``dst`` keeps the bytes it was linked to."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def keep_checkpoint(path: Path, step: int) -> None:
    """Keep the just-saved ``path`` as the checkpoint of ``step``, with its checksum."""
    kept = kept_checkpoint_path(path.parent, step)
    if kept.exists():
        return
    if checksum_path(path).is_file():
        _link_or_copy(checksum_path(path), checksum_path(kept))  # first: the kept file never lacks it
    _link_or_copy(path, kept)


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The model of a checkpoint (or of a run folder holding ``checkpoint.pt``) and its data meta.

    Raises
    ------
    TrainError
        No checkpoint at ``path``, or it cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint here (give a run folder or its checkpoint.pt)")
    ckpt = load_checkpoint(path, device)
    cfg = RunConfig.from_dict(ckpt["config"])
    model = GPT(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["data_meta"]
