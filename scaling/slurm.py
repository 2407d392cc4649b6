"""The SLURM executor: submitit job arrays, GPUs as gres, requeue on timeout or preemption.

submitit pickles a ``SlurmTask`` into every job and the job unpickles it by module path
(``scaling.slurm.SlurmTask``), so that class must stay importable here for as long as jobs
submitted by an earlier launch may still run or requeue.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from scaling.config import SweepConfig
from scaling.errors import LaunchError
from scaling.executors import Executor, Job, RunTask, _write_config, execute

__all__ = ["SlurmExecutor", "SlurmTask"]


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
