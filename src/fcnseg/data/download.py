"""Download PASCAL VOC 2012 (and optionally SBD): resumable, checksum-verified, safely extracted.

:func:`download` streams to ``<dest>.part``, resumes an existing ``.part`` with an HTTP
Range request (restarting when the server ignores it), verifies the MD5, and only then
renames the file to ``dest``: a file at ``dest`` is always complete and verified.
:func:`extract_tar` refuses members that would land outside the target folder.

CLI: ``fcnseg download --dest DIR [--sbd]``.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fcnseg.errors import ConfigError, DataError
from fcnseg.outputs import atomic_write_text


@dataclass(frozen=True)
class Resource:
    """A downloadable archive: where it is, its MD5, and its file name."""

    url: str
    md5: str
    filename: str


VOC2012 = Resource("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                   "6cd6e144f989b92b3379bac3b3de84fd", "VOCtrainval_11-May-2012.tar")
SBD = Resource("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
               "benchmark.tgz", "82b4d87ceb2ed10f6038a1cba92111cb", "benchmark.tgz")

CHUNK = 1 << 20  # 1 MiB reads


def md5sum(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex MD5 of a file, read in chunks."""
    return file_digest(path, "md5", chunk)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = CHUNK) -> str:
    """Hex digest (``md5``, ``sha256``, ...) of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived."""


def download(url: str, dest: str | os.PathLike, md5: str | None = None, *, retries: int = 3,
             timeout: float = 60.0, progress: bool = True, sha256_prefix: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``md5``, rename atomically.

    ``sha256_prefix``: the file's SHA-256 must start with it (torch hub's convention: the
    prefix is part of the file name, e.g. ``vgg16-397923af.pth``).
    An existing ``dest`` is verified and kept. A transfer interrupted more than
    ``retries`` times raises DataError with the ``.part`` kept, so the next call resumes.
    A checksum mismatch deletes the ``.part`` (its bytes are wrong, resuming cannot fix
    them) and raises DataError; ``dest`` is never created for unverified data.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if md5 is not None and md5sum(dest) != md5.lower():
            raise DataError(f"{dest} exists but its MD5 is not {md5}; delete it and run again")
        if sha256_prefix and not file_digest(dest).startswith(sha256_prefix.lower()):
            raise DataError(f"{dest} exists but its SHA-256 does not start with {sha256_prefix}; "
                            f"delete it and run again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout=timeout, progress=progress)
            break
        except _Interrupted as e:
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                kept = f"{have} bytes kept in {part}; " if have else "nothing was received; "
                raise DataError(f"download of {url} interrupted ({e}); {kept}"
                                f"run the same command again to resume") from None
    checks = [("MD5", "md5", md5, False), ("SHA-256", "sha256", sha256_prefix, True)]
    for label, algorithm, expected, prefix_only in checks:
        if expected is None:
            continue
        got = file_digest(part, algorithm)
        if not (got.startswith(expected.lower()) if prefix_only else got == expected.lower()):
            part.unlink()
            what = f"expected it to start with {expected}" if prefix_only else f"expected {expected}"
            raise DataError(f"checksum mismatch for {url}: {label} {got}, {what}; the corrupt "
                            f"download was deleted. Run again; if it fails again the server's file "
                            f"changed or a proxy alters it")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """Fetch the rest of ``url`` into ``part`` (one HTTP request). Raises _Interrupted."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fcnseg-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Range not satisfiable: the .part already holds the whole file (checked by MD5 next).
            return
        if e.code >= 500:  # server trouble is often transient: retried like a dropped connection
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}; check the URL") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Interrupted(f"cannot connect: {reason}") from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        if status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DataError(f"server sent a bad Content-Range for {url}; delete {part} and retry")
            mode = "ab"
        else:
            # The server ignored the Range header (HTTP 200): start over.
            offset, mode = 0, "wb"
        remaining = int(length) if length is not None else None
        total = offset + remaining if remaining is not None else None
        received = 0
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         desc=part.name[:-5], disable=None if progress else True) as bar:
            try:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (http.client.HTTPException, OSError) as e:  # reset, timeout, IncompleteRead
                        raise _Interrupted(f"{type(e).__name__}: {e}") from None
                    if not block:
                        break
                    try:
                        f.write(block)
                    except OSError as e:  # disk full, permissions: not a network problem, no retry
                        raise DataError(f"cannot write {part}: {e.strerror or e}; free some space "
                                        f"or choose another --dest") from None
                    received += len(block)
                    bar.update(len(block))
            finally:
                f.flush()
                os.fsync(f.fileno())  # what arrived is on disk before a resume relies on it
        if remaining is not None and received < remaining:
            raise _Interrupted(f"connection closed after {offset + received} of {total} bytes")


def extract_tar(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract ``archive`` into ``target`` safely; returns ``target``.

    Members with absolute paths, ``..`` components, or links/devices pointing outside
    are refused before anything is written; tarfile's ``filter='data'`` is used too
    where Python has it. Extraction goes to a temporary folder first and the top-level
    entries are then moved into ``target``, so a killed extraction leaves no half tree
    in place; a marker ``.<archive name>.extracted`` records success.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".extracting-{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # older Pythons: our checks above are the protection
                tar.extractall(tmp, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot extract {archive}: {e}; delete it and download again") from None
    for entry in sorted(tmp.iterdir()):
        final = target / entry.name
        if final.exists():
            if final.is_dir():
                _merge_into(entry, final)
                continue
            final.unlink()
        os.replace(entry, final)
    shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(target / f".{archive.name}.extracted", archive.name + "\n")
    return target


def _merge_into(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into the existing folder ``dst`` (re-extraction over an old tree)."""
    for entry in src.iterdir():
        final = dst / entry.name
        if entry.is_dir() and final.is_dir():
            _merge_into(entry, final)
        else:
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(entry, final)


def _check_member(m: tarfile.TarInfo, archive: Path) -> None:
    name = m.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive} contains an unsafe path {name!r} (absolute or with '..'); "
                        f"refusing to extract it")
    if m.isdev():
        raise DataError(f"{archive} contains a device file {name!r}; refusing to extract it")
    if m.issym() or m.islnk():
        link = Path(m.linkname)
        resolved = Path(os.path.normpath(Path(name).parent / link)) if m.issym() else Path(os.path.normpath(link))
        if link.is_absolute() or (resolved.parts and resolved.parts[0] == ".."):
            raise DataError(f"{archive} contains a link {name!r} -> {m.linkname!r} pointing outside "
                            f"the archive; refusing to extract it")


def fetch(resource: Resource, dest_dir: str | os.PathLike, *, keep_archive: bool = True,
          progress: bool = True, retries: int = 3) -> Path:
    """Download ``resource`` into ``dest_dir`` and extract it there (skipped if already done)."""
    dest_dir = Path(dest_dir)
    marker = dest_dir / f".{resource.filename}.extracted"
    if marker.is_file():
        return dest_dir
    archive = download(resource.url, dest_dir / resource.filename, resource.md5,
                       progress=progress, retries=retries)
    extract_tar(archive, dest_dir)
    if not keep_archive:
        archive.unlink()
    return dest_dir


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", required=True, help="folder to download and extract into")
    parser.add_argument("--sbd", action="store_true",
                        help="also download SBD (Hariharan et al.) for the 10582-image train_aug set")
    parser.add_argument("--url", default=VOC2012.url, help="override the VOC 2012 trainval URL (mirror)")
    parser.add_argument("--md5", default=VOC2012.md5, help="expected MD5 of the file at --url")
    parser.add_argument("--sbd-url", default=SBD.url, help="override the SBD URL (mirror)")
    parser.add_argument("--sbd-md5", default=SBD.md5, help="expected MD5 of the file at --sbd-url")
    parser.add_argument("--delete-archives", action="store_true", help="delete the archives after extraction")
    parser.add_argument("--retries", type=int, default=3, help="automatic resumes per file (default 3)")


def cli_main(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest} exists and is not a folder; choose another --dest")
    voc = Resource(args.url, args.md5, Path(args.url.split("?")[0]).name or VOC2012.filename)
    fetch(voc, dest, keep_archive=not args.delete_archives, retries=args.retries)
    print(f"VOC 2012 ready: {dest / 'VOCdevkit' / 'VOC2012'}")
    if args.sbd:
        sbd = Resource(args.sbd_url, args.sbd_md5, Path(args.sbd_url.split("?")[0]).name or SBD.filename)
        fetch(sbd, dest, keep_archive=not args.delete_archives, retries=args.retries)
        print(f"SBD ready: {dest / 'benchmark_RELEASE' / 'dataset'} (pass it as the SBD root)")
    return 0

