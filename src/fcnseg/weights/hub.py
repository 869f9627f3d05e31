"""torch hub's weights cache: where files live, how their hash is checked, fetching into it.

Files go where torchvision puts them, ``torch.hub.get_dir() / "checkpoints"``
(``$TORCH_HOME/hub/checkpoints``; default ``~/.cache/torch/hub/checkpoints``, or
``$XDG_CACHE_HOME/torch/hub/checkpoints``): a file a user already has from torchvision is
found there and never fetched again. As torch hub's ``check_hash``, a file named
``<name>-<hex>.<ext>`` (``vgg16-397923af.pth``) must have a SHA-256 that starts with
``<hex>``. Downloads use :func:`fcnseg.data.download.download`: resumable (``.part``),
verified before the atomic rename, so the cache never holds a half-written or unverified file.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

from fcnseg.data.download import download, file_digest
from fcnseg.errors import CheckpointError, DataError

# torch.hub's own pattern (torch/hub.py, HASH_REGEX): the hex run between the last "-" and a "."
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")

# Files already verified in this process: (path, size, mtime_ns). Hashing VGG16 (528 MB)
# costs about a second; once per process is enough.
_VERIFIED: set[tuple[str, int, int]] = set()


def cache_dir() -> Path:
    """torch hub's checkpoint folder (honours ``TORCH_HOME``, ``XDG_CACHE_HOME``, ``torch.hub.set_dir``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix(filename: str) -> str | None:
    """The SHA-256 prefix torch hub reads from a file name (``vgg16-397923af.pth`` -> ``397923af``)."""
    m = HASH_REGEX.search(filename)
    return m.group(1) if m and m.group(1) else None


def by_hand(url: str | None, dest: Path, sha256_prefix: str | None, md5: str | None) -> str:
    """The advice for installing a file without fcnseg's download (one sentence)."""
    checksum = (f"its SHA-256 must start with {sha256_prefix}" if sha256_prefix
                else f"its MD5 must be {md5}" if md5 else "no checksum is published for it")
    source = f"download {url} elsewhere" if url else "get the file"
    return f"To install it by hand, {source} and save it as {dest} ({checksum})"


def verify_file(path: Path, *, sha256_prefix: str | None = None, md5: str | None = None,
                url: str | None = None) -> None:
    """Raise CheckpointError unless ``path`` has the expected SHA-256 prefix / MD5."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    for label, algorithm, expected, prefix_only in (("SHA-256", "sha256", sha256_prefix, True),
                                                    ("MD5", "md5", md5, False)):
        if not expected:
            continue
        got = file_digest(path, algorithm)
        if not (got.startswith(expected.lower()) if prefix_only else got == expected.lower()):
            want = f"start with {expected}" if prefix_only else f"be {expected}"
            raise CheckpointError(
                f"{path}: hash mismatch: its {label} is {got[:max(len(expected), 8)]}..., it should {want}; "
                f"the file is corrupt or not the published one. Delete it and run again to download "
                f"it{f' from {url}' if url else ''}")
    _VERIFIED.add(key)


def fetch(url: str, filename: str, *, sha256_prefix: str | None = None, md5: str | None = None,
          progress: bool = True, retries: int = 3, timeout: float = 60.0) -> Path:
    """The verified file ``cache_dir()/filename``, downloaded from ``url`` if it is not there yet.

    ``sha256_prefix`` defaults to nothing; callers pass :func:`hash_prefix` of the name for
    torch hub files. Raises CheckpointError (one line: the URL, the expected hash, where to
    put the file by hand) when offline, on an HTTP error or a hash mismatch; nothing is then
    left under ``filename`` (a ``.part`` of an interrupted transfer stays, for resuming).
    """
    dest = cache_dir() / filename
    if dest.is_file():
        verify_file(dest, sha256_prefix=sha256_prefix, md5=md5, url=url)
        return dest
    if progress:
        print(f"fcnseg: downloading {url} to {dest}", file=sys.stderr)
    try:
        download(url, dest, md5, sha256_prefix=sha256_prefix, progress=progress, retries=retries,
                 timeout=timeout)
    except DataError as e:
        raise CheckpointError(f"cannot download {filename}: {str(e).rstrip('.')}. "
                              f"{by_hand(url, dest, sha256_prefix, md5)}") from None
    except OSError as e:  # the cache folder itself cannot be created or written
        raise CheckpointError(f"cannot write to the weights cache {dest.parent}: {e.strerror or e}; set "
                              f"TORCH_HOME to a writable folder") from None
    st = dest.stat()
    _VERIFIED.add((str(dest.resolve()), st.st_size, st.st_mtime_ns))  # download() verified it
    return dest


def in_cache(filename: str) -> Path | None:
    """``cache_dir()/filename`` if that file exists (not verified), else None."""
    path = cache_dir() / filename
    return path if path.is_file() else None


def base_url_override() -> str | None:
    """``FCNSEG_WEIGHTS_BASE_URL``: a mirror (or a test server) that serves every file by name."""
    base = os.environ.get("FCNSEG_WEIGHTS_BASE_URL")
    return base.rstrip("/") if base else None
