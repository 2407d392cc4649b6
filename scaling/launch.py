"""Runner: turn a sweep spec into finished runs, locally or on SLURM, without losing work.

One run function (``execute``) and one results layout (see ``scaling.results``) serve both
executors. The interface copies submitit's shape: ``Executor.submit(task) -> Job`` with
``Job.done()``, ``Job.result()`` and ``Job.exception()``.

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

import abc
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scaling.config import RunConfig, SweepConfig
from scaling.errors import LaunchError, ScalingError

__all__ = [
    "RunTask",
    "Job",
    "Executor",
    "LocalExecutor",
    "SlurmExecutor",
    "DebugExecutor",
    "sweep_tasks",
    "execute",
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
    from scaling.results import branch_start_path, kept_checkpoint_path

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
    return dropped


@contextlib.contextmanager
def _flock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` or raise LaunchError naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise LaunchError(f"{what} is locked by {holder} ({path}); wait for it or stop it") from None
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
    with _flock(out / ".run.lock", f"run {out.name}"):
        return train(cfg, out)


# ----------------------------------------------------------------------------- executors


class Job(abc.ABC):
    """A submitted run. ``result()`` blocks; ``exception()`` returns (not raises) the error."""

    def __init__(self, task: RunTask) -> None:
        self.task = task

    @abc.abstractmethod
    def done(self) -> bool:
        """True once the run's process or job has ended (whatever its outcome)."""

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
        if state.get("status") != "done":
            raise LaunchError(
                f"run {self.task.run_id} ended with status {state.get('status')!r}; "
                f"see {self.log_path()} and relaunch to resume it"
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
            [sys.executable, "-m", "scaling.launch", str(job.task.config_path), str(job.task.out_dir)],
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


class SlurmExecutor(Executor):
    """SLURM through submitit: one job array, GPUs as gres, requeue on timeout or preemption."""

    class _Job(Job):
        def __init__(self, task: RunTask, sjob: Any) -> None:
            super().__init__(task)
            self.sjob = sjob

        def done(self) -> bool:
            return bool(self.sjob.done())

        def log_path(self) -> Path:
            return Path(self.sjob.paths.stderr)

    def __init__(self, sweep: SweepConfig, folder: Path) -> None:
        import submitit

        s = sweep.launch.slurm
        self.sweep = sweep
        self.folder = folder
        self.executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm",
                                              slurm_max_num_timeout=s.max_requeues)
        params: dict[str, Any] = {
            "slurm_array_parallelism": s.array_parallelism,
            "cpus_per_task": s.cpus_per_task,
            "slurm_signal_delay_s": s.signal_delay_s,
            "name": f"scaling-{sweep.name}",
        }
        if s.gpus_per_task:
            params["gpus_per_node"] = s.gpus_per_task
        for key, value in (("slurm_partition", s.partition), ("slurm_account", s.account),
                           ("slurm_qos", s.qos)):
            if value:
                params[key] = value
        self.params = params

    def describe(self) -> str:
        return f"SLURM executor (submitit, array parallelism {self.sweep.launch.slurm.array_parallelism})"

    def timeout_min(self, tasks: list[RunTask]) -> int:
        """Time limit: the longest run's estimate × time_margin, at least min_time_min."""
        from scaling.plan import estimate_hours

        s = self.sweep.launch.slurm
        hours = max(estimate_hours(t.config, gpu=self.sweep.plan.get("gpu", "h100"),
                                   mfu=self.sweep.plan.get("mfu", 0.35)) for t in tasks)
        return max(s.min_time_min, math.ceil(hours * 60 * s.time_margin))

    def submit(self, task: RunTask) -> Job:
        return self.submit_all([task])[0]

    def submit_all(self, tasks: list[RunTask]) -> list[Job]:
        """Reattach to runs whose job from an earlier launch is still queued or running; submit
        the rest as one job array."""
        jobs: list[Job] = []
        fresh = []
        for t in tasks:
            _write_config(t)
            attached = self._attach(t)
            if attached is not None:
                jobs.append(attached)
            else:
                fresh.append(t)
        if not fresh:
            return jobs
        _check_slurm()
        self.executor.update_parameters(timeout_min=self.timeout_min(fresh), **self.params)
        try:
            sjobs = self.executor.map_array(
                SlurmTask(), [str(t.config_path) for t in fresh], [str(t.out_dir) for t in fresh]
            )
        except Exception as e:  # submitit raises plain exceptions for sbatch failures
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise LaunchError(f"sbatch failed: {first}; check that SLURM is reachable (sinfo)") from None
        for t, sj in zip(fresh, sjobs):
            _atomic_json(t.out_dir / "job.json", {"executor": "slurm", "job_id": sj.job_id,
                                                  "folder": str(self.folder)})
        return jobs + [self._Job(t, sj) for t, sj in zip(fresh, sjobs)]

    def _attach(self, task: RunTask) -> Job | None:
        """The Job of this run's earlier SLURM job if SLURM still has it queued or running."""
        import submitit

        try:
            info = json.loads((task.out_dir / "job.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        try:
            out = subprocess.run(["squeue", "-h", "-j", info["job_id"], "-o", "%T"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if not set(out.stdout.split()) & _ACTIVE:
            return None
        return self._Job(task, submitit.SlurmJob(folder=info["folder"] + "/%j", job_id=info["job_id"]))

    def interrupt(self) -> str:
        return "SLURM jobs keep running; `scaling status` watches them and a relaunch waits for them"


def _check_slurm() -> None:
    """Raise LaunchError with SLURM's own reason when its controller cannot be reached."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError("--executor slurm: SLURM's commands (sinfo, sbatch) are not on PATH; "
                          "run on a login node or use --executor local") from None
    except subprocess.TimeoutExpired:
        raise LaunchError("--executor slurm: sinfo did not answer in 60 s; check slurmctld") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"--executor slurm: SLURM is not reachable ({why}); check SLURM_CONF and slurmctld")


_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD",
           "REQUEUE_FED", "RESIZING"}


class SlurmTask:
    """The SLURM job body: run ``execute`` and requeue through submitit when interrupted.

    The trainer catches SIGUSR2 (time limit or preemption) and SIGTERM itself, finishes the
    current step and saves a checkpoint. Then, for SIGUSR2, the signal is raised again so that
    submitit's own handler requeues the job with its timeout countdown; for SIGTERM (scontrol
    requeue, scancel) SLURM is already acting and the process just exits.
    """

    def __call__(self, config_path: str, out_dir: str) -> dict[str, Any]:
        result = execute(config_path, out_dir)
        if result.status == "interrupted":
            if result.signal == "SIGUSR2":
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(600)  # submitit's handler requeues and exits the process
            os._exit(0)
        return dataclasses.asdict(result)

    def checkpoint(self, config_path: str, out_dir: str) -> Any:
        """Called by submitit on SIGUSR2: resubmit the same call; the trainer resumes it."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, config_path, out_dir)


def _atomic_json(path: Path, obj: dict[str, Any]) -> None:
    from scaling.config import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1))


def make_executor(sweep: SweepConfig, root: Path, executor: str | None, per_gpu: int | None) -> Executor:
    """The executor a launch asked for (flag first, then the sweep's launch section)."""
    kind = executor or sweep.launch.executor
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
        Ctrl-C: the running runs checkpointed (or were killed after ``INTERRUPT_WAIT_S``) and
        ``runs.parquet`` holds what finished.
    """
    from tqdm import tqdm

    from scaling.results import branch_start_path, write_runs_table

    tasks = sweep_tasks(sweep, results_root)
    root = Path(results_root) / sweep.name
    ex = executor or make_executor(sweep, root, None, None)
    with _flock(root / ".launch.lock", f"sweep {sweep.name}"):
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
        raise LaunchError(
            f"{len(failed)} run(s) did not finish; {first.run_id} ({run_state(first.out_dir).get('status')}): "
            f"{orphans.get(first.run_id) or _last_line(log)} — see {log} and relaunch to resume"
        )
    return states


def progress(out_dir: Path) -> dict[str, Any]:
    """The last logged row of a run's metrics.parquet (tokens, losses, speed), or {}."""
    import pyarrow as pa

    from scaling.results import read_metrics

    try:
        rows = read_metrics(out_dir / "metrics.parquet").to_pylist()
    except (OSError, pa.ArrowException):  # not written yet
        return {}
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


def format_status(sweep_dir: str | os.PathLike[str]) -> str:
    """The table ``scaling status results/<sweep>`` prints: one line per run."""
    root = Path(sweep_dir)
    spec = root / "sweep.yaml"
    if not spec.is_file():
        raise LaunchError(f"{root}: no sweep.yaml here; give the results/<sweep> folder of a launched sweep")
    sweep = SweepConfig.from_yaml(spec)
    tasks = sweep_tasks(sweep, root.parent)
    labels = _tree_labels(tasks)
    width = max(28, *map(len, labels.values()))
    rows: list[tuple[str, ...]] = []
    counts: dict[str, int] = {}
    for t in tasks:
        status = str(run_state(t.out_dir).get("status"))
        if status == "planned" and t.config.lineage and not t.ready:
            status = f"waiting: step {t.config.lineage.start_step}"  # of its trunk, above it
        counts[status.split(":")[0]] = counts.get(status.split(":")[0], 0) + 1
        p = progress(t.out_dir)
        done = int(p.get("tokens") or 0)
        eta = ""
        if status != "done" and p.get("tokens_per_s"):
            eta = _duration((t.config.tokens - done) / p["tokens_per_s"])
        loss = f"{p['train_loss']:.3f}" if p.get("train_loss") is not None else "-"
        val = f"{p['val_loss']:.3f}" if p.get("val_loss") is not None else "-"
        rows.append((labels[t.run_id], status[:22], f"{done:,}/{t.config.tokens:,}", loss, val, eta))
    # The tokens column is as wide as its widest entry: billions of tokens need more than 21.
    tw = max(len("tokens done/planned"), *(len(r[2]) for r in rows)) if rows else 0
    lines = [f"{'run':<{width}} {'status':<22} {'tokens done/planned':>{tw}} {'loss':>7} {'val':>7} {'ETA':>8}"]
    lines += [f"{r:<{width}} {st:<22} {tok:>{tw}} {lo:>7} {va:>7} {eta:>8}" for r, st, tok, lo, va, eta in rows]
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


def _child_main(argv: list[str]) -> int:
    """Entry point of a local run process: ``python -m scaling.launch CONFIG OUT_DIR``."""
    config_path, out_dir = argv
    try:
        result = execute(config_path, out_dir)
    except ScalingError as e:
        print(f"scaling run: error: {e}", file=sys.stderr)
        return 2
    return 0 if result.status == "done" else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
