"""The output files of one input, written as a set: all of them appear, or none.

``fcnseg predict`` writes several files per image (``a.png``, ``a_overlay.png``, heatmaps,
a panel). Written one by one, a Ctrl-C between two of them leaves an image with its
palette PNG but no overlay, which a rerun cannot tell from a finished one. Here:

1. every file of the set is written (atomically) into a private staging folder inside the
   output folder (same file system: the moves below are renames);
2. :meth:`OutputSet.commit` renames them into place, the *marker* file last, with SIGINT
   held back until the last rename is done (a Ctrl-C then takes effect right after);
3. a set is complete when all its files exist (:func:`is_complete`). A process killed
   (SIGKILL, power loss) between renames leaves a set without its marker: incomplete, so
   ``--skip-existing`` does it again and replaces the stray files.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

STAGING_PREFIX = ".fcnseg-partial-"


class OutputSet:
    """Files ``names`` (the marker last) of one input, to be written into ``out_dir``.

    Usage::

        with OutputSet(out_dir, ["a_overlay.png", "a.png"]) as files:
            save(overlay, files.path("a_overlay.png"))
            save(labels, files.path("a.png"))
        # on leaving the block without an exception: committed; on an exception: discarded

    ``committed`` is True once every file is in place, also when a Ctrl-C held back during
    the renames is then raised by :meth:`commit`.
    """

    def __init__(self, out_dir: str | os.PathLike, names: Sequence[str]):
        if not names:
            raise ValueError("an output set needs at least one file name")
        self.out_dir = Path(out_dir)
        self.names = list(names)  # the last one is the marker
        self._staging: Path | None = None
        self.committed = False

    def path(self, name: str) -> Path:
        """Where to write ``name`` (one of ``names``) before the commit."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of this set's files {self.names}")
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out_dir))
        return self._staging / name

    def commit(self) -> None:
        """Move every written file into ``out_dir``, the marker last; SIGINT waits until done."""
        staged = self._staging
        missing = [n for n in self.names if staged is None or not (staged / n).is_file()]
        if missing:
            raise RuntimeError(f"output set committed without writing {missing}")  # a bug, not bad input
        try:
            with sigint_deferred():  # a Ctrl-C meanwhile is raised when the block ends
                for name in self.names:  # the marker is last: a set cut short stays incomplete
                    os.replace(staged / name, self.out_dir / name)
                self.committed = True
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staging folder and whatever was not committed."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def is_complete(out_dir: str | os.PathLike, names: Sequence[str]) -> bool:
    """Whether every file of a set exists in ``out_dir``."""
    return all((Path(out_dir) / n).is_file() for n in names)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold back SIGINT inside the block; if one came, act on it (KeyboardInterrupt) on leaving.

    Only the main thread receives signals in Python; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)  # default_int_handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


__all__ = ["OutputSet", "is_complete", "sigint_deferred", "STAGING_PREFIX"]
