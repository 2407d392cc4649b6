"""One flat error hierarchy: every expected failure is a ScalingError subclass.

The CLI turns a ScalingError into one line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ScalingError", "ConfigError", "DataError", "TrainError", "LaunchError", "FitError", "WriteError"]


class ScalingError(Exception):
    """Base of every error the user can fix; its message names the field and the fix."""


class ConfigError(ScalingError):
    """A sweep spec, run config or command-line value is invalid."""


class DataError(ScalingError):
    """A corpus, tokenizer or token file is missing, unreadable or inconsistent."""


class TrainError(ScalingError):
    """A run cannot start or continue (bad checkpoint, data too small for the plan)."""


class LaunchError(ScalingError):
    """An executor cannot run the sweep (SLURM unreachable, lock held, no devices)."""


class FitError(ScalingError):
    """The data cannot support the requested fit (too few points, missing columns)."""


class WriteError(ScalingError):
    """A file could not be written (disk full, read-only file system, no permission)."""
