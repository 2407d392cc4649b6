"""Executors: the interface every runner backend implements, and the one run function they call.

The interface copies submitit's shape: ``Executor.submit(task) -> Job`` with ``Job.done()``,
``Job.result()`` and ``Job.exception()``. This module holds the in-process ``DebugExecutor`` (tests)
and the ``LocalExecutor`` (one process per run, packed onto local GPUs); the SLURM one is in
``scaling.slurm``. Each runs ``execute`` on a ``RunTask``; a local run process is
``python -m scaling.executors CONFIG OUT_DIR``.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scaling.config import RunConfig, writes_to
from scaling.errors import LaunchError, ScalingError

__all__ = [
    "RunTask",
    "Job",
    "Executor",
    "LocalExecutor",
    "DebugExecutor",
    "execute",
    "run_state",
    "failure_advice",
    "hold_lock",
    "lock_holder_gone",
    "visible_devices",
]


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep: its stable id, resolved config and folder."""

    run_id: str
    config: RunConfig
    out_dir: Path

    @property
    def config_path(self) -> Path:
        return self.out_dir / "config.yaml"

    @property
    def ready(self) -> bool:
        """False while a branch waits for its trunk to keep the checkpoint it starts from."""
        from scaling.results import branch_start_path

        start = branch_start_path(self.config, self.out_dir)
        return start is None or start.is_file() or (self.out_dir / "checkpoint.pt").is_file()


def run_state(out_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` as a dict, or ``{"status": "planned"}`` when it has not started."""
    path = out_dir / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"status": "planned"}
    except json.JSONDecodeError:
        # run.json is written atomically; a bad one was edited by hand. Resume decides.
        return {"status": "unknown"}


def failure_advice(cfg: RunConfig, status: str) -> str:
    """What to do about a run that ended unfinished with ``status`` (its run.json status).

    A NaN failure is not resumable: the relaunch resumes from the last checkpoint before the
    divergence and, training is deterministic, diverges again. Anything else resumes.
    """
    if status.startswith("failed: nan"):
        return (f"the loss diverged and a relaunch would diverge again from the same checkpoint: lower its "
                f"lr_peak (now {cfg.train.lr_peak:g}) or check its data ({cfg.data.path}), then relaunch")
    return "relaunch to resume from its last checkpoint"


def lock_holder_gone(out_dir: Path) -> bool:
    """True when the run's lock names a process on this machine that no longer exists: a run
    whose run.json still says "running" then died without saying so (kill -9, a crash)."""
    try:
        pid, node = (out_dir / ".run.lock").read_text().removeprefix("pid ").split(" on ", 1)
        if node.strip() != os.uname().nodename:
            return False  # another node's process: nothing to tell from here
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # no lock, unreadable, not ours to signal, not our format
        return False
    return False


@contextlib.contextmanager
def hold_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` or raise LaunchError naming the holder (WriteError
    when the lock file cannot be written, e.g. on a full disk)."""
    with writes_to(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise LaunchError(f"{what} is locked by {holder} ({path}); wait for it or stop it") from None
        with writes_to(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def execute(config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Any:
    """The one run function every executor calls: lock the run folder, train, return RunResult."""
    from scaling.train import train

    out = Path(out_dir)
    cfg = RunConfig.from_yaml(config_path)
    with hold_lock(out / ".run.lock", f"run {out.name}"):
        return train(cfg, out)


class Job(abc.ABC):
    """A submitted run. ``result()`` blocks; ``exception()`` returns (not raises) the error."""

    def __init__(self, task: RunTask) -> None:
        self.task = task

    @abc.abstractmethod
    def done(self) -> bool:
        """True once the run's process or job has ended (whatever its outcome)."""

    def ended_by(self) -> str | None:
        """How the run's process ended when that says more than its run.json (a signal that
        killed it), e.g. "was killed by SIGKILL (signal 9)"; None otherwise."""
        return None

    def result(self, poll_s: float = 1.0) -> dict[str, Any]:
        """Wait for the run to end and return its ``run.json``.

        Raises
        ------
        LaunchError
            If the run ended without finishing; the message names its log file.
        """
        while not self.done():
            time.sleep(poll_s)
        state = run_state(self.task.out_dir)
        status = str(state.get("status"))
        if status != "done":
            how = self.ended_by()
            raise LaunchError(
                f"run {self.task.run_id} ended with status {status!r}" + (f"; its process {how}" if how else "")
                + f"; see {self.log_path()}; {failure_advice(self.task.config, status)}"
            )
        return state

    def exception(self) -> LaunchError | None:
        """The error ``result()`` would raise, or None when the run finished."""
        try:
            self.result()
        except LaunchError as e:
            return e
        return None

    def log_path(self) -> Path:
        return self.task.out_dir / "log.txt"


class Executor(abc.ABC):
    """Runs tasks. Subclasses implement ``submit``; ``poll`` advances queued work."""

    @abc.abstractmethod
    def submit(self, task: RunTask) -> Job:
        """Queue or start one run and return its Job."""

    def submit_all(self, tasks: list[RunTask]) -> list[Job]:
        """Submit several runs (SLURM submits them as one job array)."""
        return [self.submit(t) for t in tasks]

    def poll(self) -> None:
        """Start queued runs where there is room; called by ``launch`` between progress updates."""

    def interrupt(self) -> str:
        """Stop gracefully after Ctrl-C; return what the user should know."""
        return ""

    def describe(self) -> str:
        return type(self).__name__


class DebugExecutor(Executor):
    """Runs each task in this process at submit time (tests and debugging)."""

    class _Job(Job):
        def done(self) -> bool:
            return True

    def __init__(self) -> None:
        self.checkpointed = 0  # runs the trainer stopped on Ctrl-C

    def submit(self, task: RunTask) -> Job:
        _write_config(task)
        try:
            result = execute(task.config_path, task.out_dir)
        except ScalingError as e:
            raise LaunchError(f"run {task.run_id}: {e}") from None
        if result.signal == "SIGINT":
            # The trainer took the Ctrl-C and checkpointed; stop the launch as Ctrl-C would.
            self.checkpointed += 1
            raise KeyboardInterrupt
        return self._Job(task)

    def interrupt(self) -> str:
        return f"{self.checkpointed} run(s) checkpointed"


def _write_config(task: RunTask) -> None:
    task.out_dir.mkdir(parents=True, exist_ok=True)
    if not task.config_path.exists():
        task.config.save_yaml(task.config_path)


def visible_devices() -> list[str]:
    """GPU ids this process may use (CUDA_VISIBLE_DEVICES, else all CUDA GPUs), or ["cpu"]."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return ids or ["cpu"]
    import torch

    n = torch.cuda.device_count()
    return [str(i) for i in range(n)] or ["cpu"]


def _gpu_memory_bytes() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(0).total_memory)


class LocalExecutor(Executor):
    """A queue over local devices: each run in its own process pinned to one GPU (or the CPU).

    Runs are packed several to a GPU when their memory estimates fit in 85% of its memory
    (``per_device=0``: at most 4), or exactly ``per_device`` at a time when given. On the CPU one
    run goes at a time unless ``per_device`` says otherwise. A packed run that fails with CUDA
    out-of-memory (the estimate is only an estimate) is run again, alone on a GPU, from its
    last checkpoint.
    """

    class _Job(Job):
        def __init__(self, task: RunTask) -> None:
            super().__init__(task)
            self.proc: subprocess.Popen[bytes] | None = None
            self.device: str | None = None
            self.exclusive = False  # run alone on its device

        def done(self) -> bool:
            return self.proc is not None and self.proc.poll() is not None

        def ended_by(self) -> str | None:
            code = self.proc.poll() if self.proc is not None else None
            if code is None or code >= 0:
                return None
            name = signal.Signals(-code).name if -code in signal.valid_signals() else "a signal"
            # SIGKILL cannot be caught, so the trainer recorded nothing: say who sends it.
            who = " (kill -9, or the kernel's out-of-memory killer)" if code == -signal.SIGKILL else ""
            return f"was killed by {name} (signal {-code}){who}"

    def __init__(
        self,
        devices: list[str] | None = None,
        per_device: int = 0,
        memory_bytes: float | None = None,
    ) -> None:
        self.devices = devices if devices is not None else visible_devices()
        self.per_device = per_device
        self.memory_bytes = memory_bytes if memory_bytes is not None else _gpu_memory_bytes()
        self.queue: list[LocalExecutor._Job] = []
        self.running: list[LocalExecutor._Job] = []

    def describe(self) -> str:
        where = "CPU" if self.devices == ["cpu"] else f"GPUs {','.join(self.devices)}"
        return f"local executor on {where}"

    def submit(self, task: RunTask) -> Job:
        _write_config(task)
        job = self._Job(task)
        self.queue.append(job)
        return job

    def _fits(self, device: str, job: LocalExecutor._Job) -> bool:
        here = [j for j in self.running if j.device == device]
        if job.exclusive or any(j.exclusive for j in here):
            return not here
        if self.per_device:
            return len(here) < self.per_device
        if device == "cpu" or self.memory_bytes is None:
            return not here
        from scaling.plan import memory_bytes

        use = sum(memory_bytes(j.task.config.model, j.task.config.train.micro_batch_size) for j in here)
        need = memory_bytes(job.task.config.model, job.task.config.train.micro_batch_size)
        return len(here) < 4 and (not here or use + need <= 0.85 * self.memory_bytes)

    def poll(self) -> None:
        for job in self.running:
            if job.done() and not job.exclusive and job.device != "cpu" and _out_of_memory(job):
                job.exclusive, job.proc, job.device = True, None, None
                self.queue.insert(0, job)
        self.running = [j for j in self.running if j.proc is not None and not j.done()]
        for job in list(self.queue):
            # The least loaded device that has room for this run.
            for device in sorted(self.devices, key=lambda d: sum(j.device == d for j in self.running)):
                if self._fits(device, job):
                    self._start(job, device)
                    self.queue.remove(job)
                    self.running.append(job)
                    break

    def _start(self, job: LocalExecutor._Job, device: str) -> None:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device
        log = open(job.log_path(), "ab")
        job.device = device
        job.proc = subprocess.Popen(
            [sys.executable, "-m", "scaling.executors", str(job.task.config_path), str(job.task.out_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Children get SIGTERM when the launcher dies, even by kill -9, so they checkpoint
            # and stop instead of training on unsupervised.
            preexec_fn=_die_with_parent,
        )
        log.close()

    def interrupt(self) -> str:
        """Let every running run checkpoint and exit; kill those still alive after
        ``INTERRUPT_WAIT_S`` or at a second Ctrl-C (they resume from an older checkpoint).

        A terminal's Ctrl-C reaches the runs itself (they share the launcher's process group);
        SIGTERM, which the trainer handles the same way, reaches those it did not (a Ctrl-C
        sent to the launcher alone, as a notebook does). Not SIGINT: a second one means "now".
        """
        self.queue.clear()
        started = {j: j.proc for j in self.running if j.proc is not None}  # some may have exited already
        if not started:
            return "no run was running"
        for proc in started.values():
            proc.send_signal(signal.SIGTERM)  # a no-op for a process that has exited
        print(f"stopping: waiting up to {INTERRUPT_WAIT_S:.0f} s for {len(started)} run(s) to checkpoint "
              f"(Ctrl-C again to kill them)", file=sys.stderr, flush=True)
        deadline = time.monotonic() + INTERRUPT_WAIT_S
        with contextlib.suppress(KeyboardInterrupt, subprocess.TimeoutExpired):
            for proc in started.values():
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        states = [run_state(j.task.out_dir).get("status") for j in started]
        saved, done = states.count("interrupted"), states.count("done")
        lost = len(started) - saved - done
        return ", ".join([f"{saved} run(s) checkpointed"]
                         + ([f"{done} finished"] if done else [])
                         + ([f"{lost} stopped before checkpointing (they resume from their last checkpoint)"]
                            if lost else []))


# How long a stopped launch waits for its runs to checkpoint: the step in flight plus one
# checkpoint write, which for a ~1B-parameter run (~12 GB of weights and Adam state) takes
# tens of seconds on a local disk.
INTERRUPT_WAIT_S = 120.0


def _out_of_memory(job: Job) -> bool:
    return str(run_state(job.task.out_dir).get("status", "")).startswith("failed: OutOfMemoryError")


def _die_with_parent() -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_main(argv: list[str]) -> int:
    """Entry point of a local run process: ``python -m scaling.executors CONFIG OUT_DIR``."""
    config_path, out_dir = argv
    try:
        result = execute(config_path, out_dir)
    except ScalingError as e:
        print(f"scaling run: error: {e}", file=sys.stderr)
        return 2
    return 0 if result.status == "done" else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
