"""fcnseg.data.download against a local HTTP server (no internet): resume, checksum, safe tar."""
from __future__ import annotations

import argparse
import hashlib
import io as _io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fcnseg.data import download as dl
from fcnseg.errors import DataError


def make_tar(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


PAYLOAD = make_tar({
    "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
    "VOCdevkit/VOC2012/big.bin": np.random.default_rng(0).bytes(200_000),  # incompressible
})
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class FileServer:
    """Serves ``payload`` at /file with Range support; counts bytes; can misbehave on purpose."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.ignore_range = False
        self.drop_after: int | None = None  # close the connection after this many body bytes ...
        self.drops_left = 10**9             # ... for this many requests
        self.served = 0
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                if self.path == "/busy":
                    self.send_error(503)
                    return
                if self.path != "/file":
                    self.send_error(404)
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                if rng and not server.ignore_range:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None and server.drops_left > 0:
                    server.drops_left -= 1
                    body = body[:server.drop_after]
                    self.close_connection = True
                # count before sending: the client may finish (and the test assert) before this
                # thread runs another line after the write
                server.served += len(body)
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer(PAYLOAD)
    yield s
    s.close()


def fetch_args(server, dest: Path) -> dict:
    return dict(url=server.url, dest=dest / "voc.tar", md5=MD5, progress=False, timeout=5)


def test_full_download_verify_extract(server, tmp_path):
    out = dl.download(**fetch_args(server, tmp_path))
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "voc.tar.part").exists()
    assert server.served == len(PAYLOAD) and server.ranges == [None]
    dl.extract_tar(out, tmp_path / "data")
    assert (tmp_path / "data/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text() == "2007_000032\n"
    assert (tmp_path / "data/.voc.tar.extracted").is_file()
    assert not list((tmp_path / "data").glob(".extracting-*"))
    # a second call finds the verified file and downloads nothing
    dl.download(**fetch_args(server, tmp_path))
    assert server.served == len(PAYLOAD)


def test_resume_requests_only_the_rest(server, tmp_path):
    n = 123_456
    (tmp_path / "voc.tar.part").write_bytes(PAYLOAD[:n])
    out = dl.download(**fetch_args(server, tmp_path))
    assert server.ranges == [f"bytes={n}-"]
    assert server.served == len(PAYLOAD) - n
    assert hashlib.md5(out.read_bytes()).hexdigest() == MD5


def test_server_ignoring_range_restarts(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "voc.tar.part").write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    out = dl.download(**fetch_args(server, tmp_path))
    assert server.ranges == ["bytes=5000-"] and server.served == len(PAYLOAD)
    assert out.read_bytes() == PAYLOAD


def test_complete_part_gets_416_and_is_finalised(server, tmp_path):
    (tmp_path / "voc.tar.part").write_bytes(PAYLOAD)
    out = dl.download(**fetch_args(server, tmp_path))
    assert server.served == 0 and out.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    args = fetch_args(server, tmp_path) | {"md5": "0" * 32}
    with pytest.raises(DataError) as e:
        dl.download(**args)
    assert f"checksum mismatch for {server.url}" in str(e.value) and "0" * 32 in str(e.value)
    assert not (tmp_path / "voc.tar").exists() and not (tmp_path / "voc.tar.part").exists()


def test_sha256_prefix_is_verified(server, tmp_path):
    """torch hub's convention: the SHA-256 must start with the prefix (from the file name)."""
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    out = dl.download(server.url, tmp_path / "a.tar", sha256_prefix=sha[:8], progress=False)
    assert out.read_bytes() == PAYLOAD
    assert dl.download(server.url, out, sha256_prefix=sha[:8], progress=False) == out  # kept, verified
    with pytest.raises(DataError, match=r"exists but its SHA-256 does not start with 00000000"):
        dl.download(server.url, out, sha256_prefix="00000000", progress=False)
    with pytest.raises(DataError) as e:
        dl.download(server.url, tmp_path / "b.tar", sha256_prefix="00000000", progress=False)
    assert f"SHA-256 {sha}, expected it to start with 00000000" in str(e.value)
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "b.tar.part").exists()


def test_interrupted_then_resumed(server, tmp_path):
    server.drop_after, server.drops_left = 70_000, 1
    with pytest.raises(DataError) as e:
        dl.download(**fetch_args(server, tmp_path), retries=0)
    msg = str(e.value)
    assert "interrupted" in msg and "70000 bytes kept" in msg and "run the same command again" in msg
    assert not (tmp_path / "voc.tar").exists()
    assert (tmp_path / "voc.tar.part").stat().st_size == 70_000
    out = dl.download(**fetch_args(server, tmp_path))  # a later call resumes
    assert server.ranges[-1] == "bytes=70000-" and server.served == len(PAYLOAD)
    assert out.read_bytes() == PAYLOAD


def test_retries_resume_within_one_call(server, tmp_path):
    server.drop_after, server.drops_left = 50_000, 2
    out = dl.download(**fetch_args(server, tmp_path), retries=2)
    assert server.ranges == [None, "bytes=50000-", "bytes=100000-"]
    assert out.read_bytes() == PAYLOAD and server.served == len(PAYLOAD)


def test_http_errors_and_unreachable(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        dl.download(server.url.replace("/file", "/nope"), tmp_path / "x", None, progress=False)
    with pytest.raises(DataError, match="interrupted \\(HTTP 503"):  # 5xx: retried, then reported
        dl.download(server.url.replace("/file", "/busy"), tmp_path / "x", None, progress=False, retries=1)
    server.close()
    with pytest.raises(DataError, match="interrupted \\(cannot connect.*nothing was received; run the same"):
        dl.download(server.url, tmp_path / "y", None, progress=False, retries=0, timeout=2)
    (tmp_path / "bad.tar").write_bytes(b"other")
    with pytest.raises(DataError, match="exists but its MD5"):
        dl.download(server.url, tmp_path / "bad.tar", MD5, progress=False)


@pytest.mark.parametrize("evil", [
    {"files": {"../escape.txt": b"x"}},
    {"files": {"/tmp/abs_escape.txt": b"x"}},
    {"files": {"ok/../../escape.txt": b"x"}},
    {"files": {}, "symlinks": {"link": "../../etc/passwd"}},
    {"files": {}, "symlinks": {"link": "/etc/passwd"}},
])
def test_unsafe_tar_members_refused(tmp_path, evil):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(make_tar(evil["files"], evil.get("symlinks")))
    with pytest.raises(DataError, match=r"evil\.tar contains .*refusing to extract"):
        dl.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not any(p.name != ".extracting-evil.tar" for p in (tmp_path / "out").iterdir())


def test_corrupt_tar_is_a_data_error(tmp_path):
    (tmp_path / "broken.tar").write_bytes(PAYLOAD[:700])
    with pytest.raises(DataError, match=r"cannot extract .*broken\.tar"):
        dl.extract_tar(tmp_path / "broken.tar", tmp_path / "out")


def test_cli_downloads_and_extracts_once(server, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    dl.add_cli_arguments(parser)
    args = parser.parse_args(["--dest", str(tmp_path / "voc"), "--url", server.url, "--md5", MD5])
    assert args.sbd is False and dl.VOC2012.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert dl.SBD.md5 == "82b4d87ceb2ed10f6038a1cba92111cb"
    assert dl.cli_main(args) == 0
    assert "VOC 2012 ready" in capsys.readouterr().out
    assert (tmp_path / "voc/VOCdevkit/VOC2012/big.bin").stat().st_size == 200_000
    assert dl.cli_main(args) == 0  # already extracted: nothing fetched again
    assert server.served == len(PAYLOAD)
