"""Graceful stop on SIGINT / SIGTERM during training.

The handler only records the signal; the training loop checks it once per step, saves a
resumable ``last.pt`` and raises :class:`TrainingInterrupted`, which the CLI turns into
exit code 128 + signal number (130 for SIGINT / Ctrl-C, 143 for SIGTERM, as a shell
reports a process killed by that signal). A second Ctrl-C aborts at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from fcnseg.errors import FcnsegError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(FcnsegError):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopRequest:
    """Records the first SIGINT/SIGTERM received while :meth:`installed` is active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait
        self.signum = signum  # no printing here: print() is not reentrant-safe in a handler

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Install the handlers (main thread only; elsewhere signals cannot be caught)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
