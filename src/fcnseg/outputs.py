"""Outputs a user keeps: atomic file writes and output-directory checks (stdlib only).

Everything fcnseg writes that a user keeps (checkpoints, PNGs, reports, JSON) goes
through :func:`atomic_write` (torch files through :func:`fcnseg.torch_files.atomic_save_torch`,
which uses it): the data lands in a temporary file in the same folder, is flushed and
fsynced, then renamed over the target. A process killed at any point leaves either the
old file or the new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from fcnseg.errors import ConfigError


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in /proc/self/status (since 4.7). Elsewhere it can only be read by
    setting it (``os.umask`` returns the old value) and setting it back; the umask is
    process-wide, so that is done under a lock, and the window is a few microseconds.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permissions a file created now gets from ``open()``: 0o666 minus the umask (0644 with 022)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    The file gets the permissions ``open()`` would give it (the umask is honoured), not the
    0600 of the temporary file, so results in a shared folder stay readable to others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            if hasattr(os, "fchmod"):  # POSIX; mkstemp creates 0600 whatever the umask
                os.fchmod(f.fileno(), new_file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_image(image, path: str | os.PathLike, **save_kwargs) -> None:
    """Save a PIL image atomically; the format comes from the file suffix."""
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), None)
    with atomic_write(path, "wb") as f:
        image.save(f, format=fmt, **save_kwargs)


def prepare_output_dir(path: str | os.PathLike, *, overwrite: bool, min_free_mb: int = 50,
                       what: str = "output") -> Path:
    """Check, before any long work starts, that ``path`` can take our results.

    - an existing non-empty directory is refused unless ``overwrite`` (results are never
      silently replaced);
    - the directory must be creatable and writable (tested by writing a probe file);
    - at least ``min_free_mb`` MiB must be free on its disk.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} path {path} exists and is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(
            f"{what} directory {path} already holds results; pass --overwrite to replace them "
            f"or choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to {what} directory {path}: {e.strerror or e}; "
                          f"choose a writable --out") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise ConfigError(f"only {free_mb:.0f} MiB free on the disk of {path} (need >= {min_free_mb} MiB); "
                          f"free some space or choose another --out")
    return path
