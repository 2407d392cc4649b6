"""Runner: turn a sweep spec into finished runs, locally or on SLURM, without losing work.

One run function (``execute``) and one results layout (see ``scaling.results``) serve every
executor. The interface copies submitit's shape: ``Executor.submit(task) -> Job`` with
``Job.done()``, ``Job.result()`` and ``Job.exception()``. The interface and the debug and local
executors are in ``scaling.executors``, the SLURM executor in ``scaling.slurm``; this module turns
a sweep into tasks, drives them to the end and reports their status.

Safety rules:
- a sweep folder is locked (``flock`` on ``.launch.lock``) by the launch that drives it, so two
  launches cannot run the same runs at once;
- every run folder is locked by the process that trains it, so even an orphaned run cannot be
  trained twice at the same time;
- a finished run (``run.json`` status ``done``) is skipped; any other is resumed from its
  checkpoint by the trainer;
- Ctrl-C lets the running runs checkpoint the step they are on (``LocalExecutor.interrupt``),
  rebuilds ``runs.parquet`` and raises ``LaunchInterrupted`` naming the command that continues.

WSD cooldown branching (``train.schedule: wsd-branch``): each size's trunk and branches are runs
of their own; ``launch`` holds a branch back until its trunk has kept the checkpoint it starts
from, then submits it like any run. One rule for every executor, and no GPU or SLURM job sits
waiting meanwhile; a trunk that ends without that checkpoint fails its waiting branches. As runs
end, ``launch`` deletes the trunk checkpoints no unfinished run needs (``drop_spent_checkpoints``).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from pathlib import Path
from typing import Any

from scaling.config import RunConfig, SweepConfig
from scaling.errors import ConfigError, LaunchError
from scaling.executors import (DebugExecutor, Executor, Job, LocalExecutor, RunTask, failure_advice, hold_lock,
                               lock_holder_gone, run_state)
from scaling.slurm import SlurmExecutor

__all__ = [
    "sweep_tasks",
    "make_executor",
    "launch",
    "LaunchInterrupted",
    "drop_spent_checkpoints",
    "progress",
    "format_status",
]


class LaunchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a launch after its runs checkpointed; ``str(e)`` is one line saying how
    many did and the command that continues. A KeyboardInterrupt, so that code catching
    ScalingError or LaunchError does not swallow the user's Ctrl-C."""


def sweep_tasks(sweep: SweepConfig, results_root: str | os.PathLike[str]) -> list[RunTask]:
    """The sweep's runs as tasks under ``results_root/<sweep>/``, each id derived from its config.

    The id is the run name plus a digest of the resolved config, so editing a run's settings
    gives it a new folder instead of resuming a checkpoint trained under other settings. Each
    branch group adds its trunk, then its branches (whose configs name the trunk's id).
    """
    root = Path(results_root) / sweep.name
    tasks: list[RunTask] = []

    def add(cfg: RunConfig) -> str:
        run_id = f"{cfg.name}-{cfg.digest()[:8]}"
        tasks.append(RunTask(run_id, cfg, root / run_id))
        return run_id

    for i in range(len(sweep.runs)):
        add(sweep.resolve(i))
    for g, group in enumerate(sweep.branches):
        trunk_id = add(sweep.resolve_trunk(g))
        for j in range(len(group.points)):
            add(sweep.resolve_branch(g, j, trunk_id))
    return tasks


def drop_spent_checkpoints(tasks: list[RunTask]) -> list[Path]:
    """Delete the trunk checkpoints that no unfinished run of ``tasks`` can need; return them.

    A trunk's kept ``checkpoint_{step:06d}.pt`` (weights and Adam moments, 12 bytes per parameter)
    goes once every branch that starts from it is done: a relaunch skips done runs, so nothing
    reads it again. While any of them is not done (planned, running, interrupted, failed) it
    stays, so that branch can still (re)start from it.

    The trunk's own ``checkpoint.pt`` goes too once the trunk and all its branches are done. Only
    a resume reads it, and a done trunk never resumes; any edit of the sweep's points changes the
    trunk's config and so its run id, so no later sweep resumes it either. Nor is it a model anyone
    evaluates (its LR never decayed). By default it is the last kept checkpoint itself (the trunk
    ends at its last branch point, and keeping is a hard link), so keeping it would keep those bytes.
    """
    from scaling.results import branch_start_path, checksum_path, kept_checkpoint_path

    unfinished = [t for t in tasks if run_state(t.out_dir).get("status") != "done"]
    needed = {branch_start_path(t.config, t.out_dir) for t in unfinished}  # the very paths a branch reads
    busy = {t.run_id for t in unfinished} | {t.config.lineage.trunk for t in unfinished if t.config.lineage}
    dropped = []
    for trunk in tasks:
        lin = trunk.config.lineage
        if lin is None or lin.trunk is not None:
            continue
        spent = [p for p in (kept_checkpoint_path(trunk.out_dir, k) for k in lin.keep_steps) if p not in needed]
        if trunk.run_id not in busy:
            spent.append(trunk.out_dir / "checkpoint.pt")
        for path in spent:
            if path.is_file():
                path.unlink(missing_ok=True)
                dropped.append(path)
            checksum_path(path).unlink(missing_ok=True)
    return dropped


def make_executor(sweep: SweepConfig, root: Path, executor: str | None, per_gpu: int | None) -> Executor:
    """The executor a launch asked for (flag first, then the sweep's launch section)."""
    kind = executor or sweep.launch.executor
    if per_gpu is not None and per_gpu < 0:
        raise ConfigError(f"--per-gpu: must be >= 0 runs per GPU, 0 = auto by memory (got {per_gpu})")
    if kind == "local":
        return LocalExecutor(per_device=per_gpu if per_gpu is not None else sweep.launch.per_gpu)
    if kind == "slurm":
        return SlurmExecutor(sweep, root / ".submitit")
    if kind == "debug":
        return DebugExecutor()
    raise LaunchError(f"--executor: unknown executor {kind!r}; use local or slurm")


def launch(
    sweep: SweepConfig,
    results_root: str | os.PathLike[str] = "results",
    executor: Executor | None = None,
    progress: bool = True,
    resume_command: str | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished run of ``sweep``; return the final ``run.json`` of each run.

    Finished runs are skipped, unfinished ones resume; ``runs.parquet`` is rebuilt as runs end.
    ``resume_command`` is the command named when Ctrl-C stops the launch (default: ``scaling
    launch`` on the sweep.yaml saved in the sweep's results folder).

    Raises
    ------
    LaunchError
        Another launch holds the sweep, or a run did not finish.
    LaunchInterrupted
        Ctrl-C: the running runs checkpointed (or were killed after ``executors.INTERRUPT_WAIT_S``) and
        ``runs.parquet`` holds what finished.
    """
    from tqdm import tqdm

    from scaling.results import branch_start_path, write_runs_table

    tasks = sweep_tasks(sweep, results_root)
    root = Path(results_root) / sweep.name
    ex = executor or make_executor(sweep, root, None, None)
    with hold_lock(root / ".launch.lock", f"sweep {sweep.name}"):
        sweep.save_yaml(root / "sweep.yaml")
        todo = [t for t in tasks if run_state(t.out_dir).get("status") != "done"]
        # Longest runs first: the sweep ends sooner when the big ones are not left for last.
        todo.sort(key=lambda t: -t.config.tokens * t.config.model.n_layer * t.config.model.d_model**2)
        write_runs_table(root, tasks)
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), unit="run",
                   desc=sweep.name, disable=not progress)
        held = [t for t in todo if not t.ready]  # branches whose trunk checkpoint is not there yet
        logs: dict[str, Path] = {}
        pending: list[Job] = []
        orphans: dict[str, str] = {}
        deaths: dict[str, str] = {}  # run id -> how its process was killed
        try:
            # Inside the try: the debug executor trains at submit time, so Ctrl-C can land here.
            pending = ex.submit_all([t for t in todo if t.ready])
            logs.update((j.task.run_id, j.log_path()) for j in pending)
            while pending or held:
                released = [t for t in held if t.ready]
                if released:
                    held = [t for t in held if t not in released]
                    more = ex.submit_all(released)
                    logs.update((j.task.run_id, j.log_path()) for j in more)
                    pending += more
                ex.poll()
                finished = [j for j in pending if j.done()]
                for j in finished:
                    pending.remove(j)
                    bar.update(1)
                    if (how := j.ended_by()) is not None:
                        deaths[j.task.run_id] = f"its process {how}"
                if finished:
                    write_runs_table(root, tasks)
                    drop_spent_checkpoints(tasks)
                bar.set_postfix_str(_running_summary(pending))
                # A branch whose trunk is neither queued nor running will never get its checkpoint.
                running = {j.task.run_id for j in pending}
                for t in [t for t in held if t.config.lineage and t.config.lineage.trunk not in running]:
                    if not t.ready:
                        held.remove(t)
                        start = branch_start_path(t.config, t.out_dir)
                        assert start is not None
                        # A done trunk is never resumed, so only retraining it brings the checkpoint back.
                        orphans[t.run_id] = (
                            f"{start} is gone and its trunk is done (a kept checkpoint is deleted once its branches "
                            f"are done); delete {start.parent} and relaunch to retrain the trunk"
                            if run_state(start.parent).get("status") == "done"
                            else f"its trunk ended without keeping {start}")
                if pending or held:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            note = ex.interrupt()
            write_runs_table(root, tasks)
            bar.close()
            if resume_command is None:
                resume_command = shlex.join(["scaling", "launch", str(root / "sweep.yaml"),
                                             "--results", str(results_root)])
            raise LaunchInterrupted(f"interrupted: {note}; re-run `{resume_command}` to continue") from None
        bar.close()
        write_runs_table(root, tasks)
        drop_spent_checkpoints(tasks)  # also those a launch that ended before this one left
    states = [run_state(t.out_dir) for t in tasks]
    failed = [t for t, s in zip(tasks, states) if s.get("status") != "done"]
    if failed:
        first = failed[0]
        log = logs.get(first.run_id, first.out_dir / "log.txt")
        status = str(run_state(first.out_dir).get("status"))
        if first.run_id in orphans:  # says itself what to do
            what, advice = orphans[first.run_id], ""
        else:
            what = deaths.get(first.run_id) or _last_line(log)
            advice = f"; {failure_advice(first.config, status)}"
        raise LaunchError(f"{len(failed)} run(s) did not finish; {first.run_id} ({status}): {what} — "
                          f"see {log}{advice}")
    return states


def progress(out_dir: Path) -> dict[str, Any]:
    """The last logged row of a run's metrics.parquet (tokens, losses, speed), or {} when it has
    none yet; ``{"damaged": reason}`` when the file is there but cannot be read."""
    import pyarrow as pa

    from scaling.results import read_metrics

    try:
        rows = read_metrics(out_dir / "metrics.parquet").to_pylist()
    except FileNotFoundError:  # not written yet
        return {}
    except (OSError, pa.ArrowException, KeyError):
        # Written atomically, so a file that does not read was damaged after it was written.
        return {"damaged": "metrics.parquet"}
    if not rows:
        return {}
    vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    return {**rows[-1], "val_loss": vals[-1] if vals else None}


def _last_line(path: Path) -> str:
    """The last line of a log that says what went wrong (an error line if there is one)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "no log"
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or ln.startswith("scaling")]
    return (errors or lines or ["empty log"])[-1]


def _running_summary(jobs: list[Job]) -> str:
    parts = []
    for j in [j for j in jobs if isinstance(j, LocalExecutor._Job) and j.proc][:3]:
        done = progress(j.task.out_dir).get("tokens")
        if done:
            parts.append(f"{j.task.config.name} {done / j.task.config.tokens:.0%}")
    return ", ".join(parts)


# Wide enough for "damaged: metrics.parquet"; longer statuses (failure reasons) are cut here.
_STATUS_WIDTH = 24


def format_status(sweep_dir: str | os.PathLike[str]) -> str:
    """The table ``scaling status results/<sweep>`` prints: one line per run."""
    root = Path(sweep_dir)
    spec = root / "sweep.yaml"
    if not spec.is_file():
        raise LaunchError(f"{root}: no sweep.yaml here; give the results/<sweep> folder of a launched sweep")
    sweep = SweepConfig.from_yaml(spec)
    # The runs are in this folder whatever it is called now and however it was named (`status .`).
    tasks = [dataclasses.replace(t, out_dir=root / t.run_id) for t in sweep_tasks(sweep, root)]
    labels = _tree_labels(tasks)
    width = max(28, *map(len, labels.values()))
    rows: list[tuple[str, ...]] = []
    counts: dict[str, int] = {}
    for t in tasks:
        status = str(run_state(t.out_dir).get("status"))
        if status == "planned" and t.config.lineage and not t.ready:
            status = f"waiting: step {t.config.lineage.start_step}"  # of its trunk, above it
        elif status == "running" and lock_holder_gone(t.out_dir):
            status = "died: relaunch resumes"  # its process is gone; the checkpoint is what is left
        p = progress(t.out_dir)
        done = int(p.get("tokens") or 0)
        if "damaged" in p:
            # The finished run's record still counts its tokens; its curve is what is lost.
            done = int((run_state(t.out_dir).get("result") or {}).get("tokens") or 0)
            status = f"damaged: {p['damaged']}"
        counts[status.split(":")[0]] = counts.get(status.split(":")[0], 0) + 1
        eta = ""
        if status == "running" and p.get("tokens_per_s"):  # a failed or stopped run has no ETA
            eta = _duration((t.config.tokens - done) / p["tokens_per_s"])
        loss = f"{p['train_loss']:.3f}" if p.get("train_loss") is not None else "-"
        val = f"{p['val_loss']:.3f}" if p.get("val_loss") is not None else "-"
        rows.append((labels[t.run_id], status[:_STATUS_WIDTH], f"{done:,}/{t.config.tokens:,}", loss, val, eta))
    # The tokens column is as wide as its widest entry: billions of tokens need more than 21.
    tw = max(len("tokens done/planned"), *(len(r[2]) for r in rows)) if rows else 0
    sw = _STATUS_WIDTH
    lines = [f"{'run':<{width}} {'status':<{sw}} {'tokens done/planned':>{tw}} {'loss':>7} {'val':>7} {'ETA':>8}"]
    lines += [f"{r:<{width}} {st:<{sw}} {tok:>{tw}} {lo:>7} {va:>7} {eta:>8}" for r, st, tok, lo, va, eta in rows]
    lines.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


def _tree_labels(tasks: list[RunTask]) -> dict[str, str]:
    """Run ids as ``scaling status`` shows them: each branch under its trunk, as a tree."""
    last = {t.config.lineage.trunk: t.run_id for t in tasks if t.config.lineage and t.config.lineage.trunk}
    labels = {}
    for t in tasks:
        trunk = t.config.lineage.trunk if t.config.lineage else None
        branch = "└─ " if last.get(trunk) == t.run_id else "├─ "
        labels[t.run_id] = t.run_id if trunk is None else branch + t.run_id
    return labels


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
