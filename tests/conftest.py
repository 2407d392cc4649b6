"""Shared pytest fixtures, one section per fixture."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pytest

# --- slurm_cluster: a real slurmctld + slurmd on localhost (slurm/), for tests marked `slurm`

REPO = Path(__file__).resolve().parent.parent
SLURM_SCRIPTS = REPO / "slurm"
SLURM_FAKE_GPUS = 2  # CUDA_VISIBLE_DEVICES for jobs that ask for GPUs on this GPU-less machine
SLURM_SKIP_ENV = "SCALING_SKIP_SLURM"


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A running single-node test cluster brought up by ``slurm/up.sh``.

    Attributes
    ----------
    dir
        Where all its state lives: ``slurm.conf``, ``bin/sacct`` (the shim), ``log/``, ``state/``.
    env
        What a client needs: ``SLURM_CONF`` and ``PATH`` with ``dir/bin`` first. sbatch exports the
        caller's environment, so jobs inherit it (and with it the ``scontrol requeue`` of submitit).
    """

    dir: Path
    env: dict[str, str]

    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's SLURM clients (submitit's sbatch/sacct calls included) at the cluster."""
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def run(self, *args: str, timeout_s: float = 30.0) -> str:
        """Run a SLURM client command against the cluster and return its stdout.

        Raises
        ------
        subprocess.CalledProcessError
            When the command fails; its stderr is in the exception.
        """
        return subprocess.run(
            args, env={**os.environ, **self.env}, check=True, capture_output=True, text=True, timeout=timeout_s
        ).stdout

    def job_state(self, job_id: str) -> str:
        """The job's state from slurmctld's records (``PENDING``, ``RUNNING``, ``COMPLETED`` ...)."""
        states = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").split()
        return states[0] if states else "UNKNOWN"

    def job_field(self, job_id: str, name: str) -> str:
        """One ``Name=value`` field of ``scontrol show job`` (e.g. ``Restarts``, ``JobState``)."""
        for word in self.run("scontrol", "show", "job", job_id).split():
            key, _, value = word.partition("=")
            if key == name:
                return value
        raise KeyError(f"scontrol show job {job_id} has no field {name}")

    def wait_state(self, job_id: str, states: Collection[str], timeout_s: float) -> str:
        """Poll until the job is in one of ``states``; return it.

        Raises
        ------
        TimeoutError
            With the last state seen and where the daemons' logs are.
        """

        def reached() -> str:
            state = self.job_state(job_id)
            return state if state in states else ""

        return str(self.wait_until(reached, timeout_s, f"job {job_id} in {sorted(states)}"))

    def wait_until(self, condition: Callable[[], object], timeout_s: float, what: str) -> object:
        """Poll ``condition`` every 0.2 s until it returns something truthy; return that.

        Raises
        ------
        TimeoutError
            Naming ``what`` was awaited and the cluster's log folder.
        """
        deadline = time.monotonic() + timeout_s
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; daemon logs: {self.dir / 'log'}")
            time.sleep(0.2)
        return value


def _slurm_script(name: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> None:
    """Run ``slurm/NAME`` and fail the test session with its stderr when it fails."""
    done = subprocess.run(
        ["bash", str(SLURM_SCRIPTS / name), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        pytest.fail(
            f"slurm/{name} failed (exit {done.returncode}), so the SLURM tests cannot run: "
            f"{done.stderr.strip()}\n(set {SLURM_SKIP_ENV}=1 to skip them on a machine without SLURM)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real single-node SLURM cluster for the session, torn down (nothing left running) at the end.

    Installs the Debian packages if they are missing (root only), brings slurmctld + slurmd up under a
    temporary DIR with auth/none, the sacct shim and ``SLURM_FAKE_GPUS`` fake GPUs. Fails (does not skip)
    where SLURM cannot run, unless ``SCALING_SKIP_SLURM=1``.
    """
    if os.environ.get(SLURM_SKIP_ENV) == "1":
        pytest.skip(f"{SLURM_SKIP_ENV}=1: SLURM tests skipped")
    _slurm_script("install.sh", timeout_s=600.0)
    cluster_dir = tmp_path_factory.mktemp("slurm")
    try:
        up_env = {"SLURM_AUTH": "none", "SLURM_FAKE_GPUS": str(SLURM_FAKE_GPUS)}
        _slurm_script("up.sh", str(cluster_dir), env=up_env)
        # The layout up.sh documents (slurm/README.md): DIR/slurm.conf and the shim in DIR/bin.
        env = {
            "SLURM_CONF": str(cluster_dir / "slurm.conf"),
            "PATH": f"{cluster_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        yield SlurmCluster(dir=cluster_dir, env=env)
    finally:
        _slurm_script("down.sh", str(cluster_dir))


# --- one_thread: torch on one intra-op thread for a test module (pytest.mark.usefixtures("one_thread"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run the module's tests with torch on one intra-op thread, restoring the count after.

    Tiny CPU models gain nothing from intra-op threads, and on a busy 2-core machine they thrash.
    """
    import torch  # here, not at the top: modules that never train should not pay for importing torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
