"""User-facing errors. Each message names the file (when there is one) and the fix."""
from __future__ import annotations


class FcnsegError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class DataError(FcnsegError, ValueError):
    """A data file is missing, unreadable or inconsistent (image, mask, split file)."""


class CheckpointError(FcnsegError, ValueError):
    """A weights/checkpoint file is unsafe, corrupt, or does not match the model."""


class ConfigError(FcnsegError, ValueError):
    """Bad command-line options or paths (e.g. output exists without --overwrite)."""


class DivergenceError(FcnsegError, RuntimeError):
    """Training produced a NaN or infinite loss."""


class DataWarning(UserWarning):
    """Data that is usable but probably not what the user meant (e.g. masks without images).

    The CLI prints these as one line, ``fcnseg <command>: warning: ...``.
    """
