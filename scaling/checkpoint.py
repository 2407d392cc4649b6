"""Checkpoints of a run: atomic save and load, RNG state, kept branch-point copies, and the checks
that a checkpoint resumes (or starts, for a WSD branch) exactly the run it is loaded into.

A checkpoint is one ``torch.save`` dict of plain types and tensors (model, optimizer, scaler,
step, loop state, per-rank loader positions and RNG states, the config dict and data meta), so
``torch.load(..., weights_only=True)`` reads it. ``scaling.train`` writes and resumes it;
``load_model`` gives back its model.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from scaling.config import RunConfig, atomic_write
from scaling.errors import TrainError
from scaling.model import GPT
from scaling.results import branch_start_path, kept_checkpoint_path
from scaling.schedule import lr_at

__all__ = ["load_model"]

CHECKPOINT = "checkpoint.pt"
# Config fields that may change between an interrupted run and its resumption: they steer
# bookkeeping and speed, not the training losses. (final_eval_tokens sizes only the eval after the
# last update, recorded with its result; runs checkpointed before the field existed resume.)
_RESUMABLE_CHANGES = ("name", "data.path", "train.log_interval", "train.checkpoint_interval",
                      "train.flush_interval", "train.compile", "train.compile_mode", "train.device",
                      "train.final_eval_tokens")


def _rng_state() -> dict[str, Any]:
    """Every RNG the process may use, as plain types and tensors (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # This process's device only: get_rng_state_all() would open a context on every GPU.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())  # map_location may have put it on the GPU
    if state["cuda"] is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])


def _save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save through ``atomic_write``, so a crash never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f))


def _load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
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


def _check_same_run(saved: dict[str, Any], cfg: RunConfig, path: Path) -> None:
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


def _branch_start(cfg: RunConfig, out_dir: Path) -> Path | None:
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


def _check_branch_start(saved: dict[str, Any], cfg: RunConfig, path: Path, step: int) -> None:
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


def _keep_checkpoint(path: Path, step: int) -> None:
    """Keep the just-saved ``path`` as the checkpoint of ``step`` (a hard link: no copy)."""
    kept = kept_checkpoint_path(path.parent, step)
    if kept.exists():
        return
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, kept)
    finally:
        tmp.unlink(missing_ok=True)


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
    ckpt = _load_checkpoint(path, device)
    cfg = RunConfig.from_dict(ckpt["config"])
    model = GPT(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt["data_meta"]
