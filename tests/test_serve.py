"""fcnseg serve: upload checks, legend and outputs (no Gradio needed), then the real server:
the page driven in Chromium (Playwright) and the API under 50 concurrent requests.

The browser tests skip when gradio, playwright or /usr/bin/chromium is missing, unless
FCNSEG_REQUIRE_BROWSER=1 (set by .ci/run): then they fail, so CI cannot skip them silently.
One server (two tiny random-weight checkpoints) serves the whole module.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fcnseg
from fcnseg.data import image_files as data_io
from fcnseg.errors import ConfigError, DataError
from fcnseg.serve import segmenter
from fcnseg.serve.cli import check_args, exposure_warning, is_loopback

from _predict_utils import CLASS_NAMES, PALETTE, save_tiny_checkpoint, smooth_image
from test_data_io import png_header_only

CHROMIUM = "/usr/bin/chromium"
SERVER_MAX_PIXELS = 1_000_000  # the test server's --max-pixels


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Two tiny checkpoints with different random weights, named as the picker shows them."""
    root = tmp_path_factory.mktemp("serve_ckpts")
    out = {}
    for name, seed in (("alpha", 0), ("beta", 1)):
        (root / name).mkdir()
        out[f"{name}/best.pt"] = save_tiny_checkpoint(root / name / "best.pt", seed=seed)
    return out


@pytest.fixture(scope="module")
def served(ckpts) -> list[segmenter.ServedModel]:
    return segmenter.load_models(list(ckpts.values()))


# ----------------------------------------------------------------------------- no Gradio needed

def test_read_upload_returns_the_pixels(tmp_path):
    a = smooth_image(30, 40, seed=1)
    Image.fromarray(a).save(tmp_path / "x.png")
    np.testing.assert_array_equal(segmenter.read_upload(tmp_path / "x.png", "x.png"), a)


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(smooth_image(120, 160, seed=2)).save(path.with_suffix(".full.jpg"), quality=95)
    data = path.with_suffix(".full.jpg").read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize("case, pattern", [
    ("empty", r"^holiday\.jpg is empty \(0 bytes\); upload an image file"),
    ("text", r"^image file holiday\.jpg is not an image Pillow can read .*; convert it to PNG or JPEG$"),
    ("truncated", r"^image file holiday\.jpg is truncated or corrupt \(.*\); re-download or re-export it$"),
    ("bomb", r"^holiday\.jpg declares more than 179 MP \(a decompression bomb or a corrupt header\); "
             r"this server takes images up to 1 MP: resize it$"),
    ("over_limit", r"^holiday\.jpg is 12000x10000 pixels \(120 MP\), above this server's limit of 1 MP; "
                   r"resize it, or restart fcnseg serve with a larger --max-pixels$"),
])
def test_read_upload_refuses_bad_files_with_one_line(tmp_path, case, pattern):
    """Each message names the upload as the user called it (never the server's temporary copy)."""
    path = tmp_path / "upload_7f3a"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not an image\n")
    elif case == "truncated":
        _truncated_jpeg(path)
    elif case == "bomb":
        png_header_only(path, 100_000, 100_000, mode_byte=2)
    else:  # a genuine header, 120 MP: refused from the header, before decoding anything
        png_header_only(path, 12_000, 10_000, mode_byte=2)
    with pytest.raises(DataError) as e:
        segmenter.read_upload(path, "holiday.jpg", max_pixels=SERVER_MAX_PIXELS)
    msg = str(e.value)
    assert re.match(pattern, msg), msg
    assert "\n" not in msg and "upload_7f3a" not in msg and str(tmp_path) not in msg


def test_read_upload_limit_is_inclusive(tmp_path):
    Image.fromarray(smooth_image(100, 100)).save(tmp_path / "a.png")
    assert segmenter.read_upload(tmp_path / "a.png", "a.png", max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(DataError, match=r"a\.png is 100x100 pixels"):
        segmenter.read_upload(tmp_path / "a.png", "a.png", max_pixels=9_999)


def test_class_shares_counts_pixels_and_skips_ignore():
    labels = np.zeros((10, 10), np.uint8)
    labels[:3] = 2        # 30 px
    labels[3:5] = 255     # 20 px ignore: not a class
    labels[5, :5] = 4     # 5 px
    # class 0: 45 px. Shares are of the whole image, largest first.
    assert segmenter.class_shares(labels) == [(0, 0.45), (2, 0.30), (4, 0.05)]


def test_display_names_are_short_and_unique(tmp_path):
    assert segmenter.display_names(["runs/a/best.pt", "runs/b/best.pt"]) == ["a/best.pt", "b/best.pt"]
    assert segmenter.display_names(["x/m.pt", "y/m.onnx"]) == ["m.pt", "m.onnx"]
    assert segmenter.display_names(["p/a/best.pt", "q/a/best.pt"]) == ["p/a/best.pt", "q/a/best.pt"]
    with pytest.raises(ConfigError, match=r"given twice"):
        segmenter.display_names([tmp_path / "m.pt", tmp_path / "." / "m.pt"])


def test_loaded_models_carry_checkpoint_classes_and_a_prepared_runner(served, ckpts):
    a = served[0]
    assert a.name == "alpha/best.pt" and a.class_names == CLASS_NAMES
    assert a.palette[:len(PALETTE)] == PALETTE and a.palette[255] == (224, 224, 192)  # VOC's after
    assert a.description == "fcn8s_small (modern), PyTorch on cpu"
    fast = a.runner._fast
    assert fast is not None  # built at start-up, not by the first request
    img = smooth_image(48, 64, seed=4)
    first = segmenter.segment(a, img).labels
    assert a.runner._fast is fast  # the same prepared module serves every request
    np.testing.assert_array_equal(first, fcnseg.segment(fcnseg.load_model(ckpts["alpha/best.pt"]), img))


def test_big_images_go_through_tiled_inference(served, ckpts, monkeypatch):
    """Above the auto-tiling threshold a request is tiled exactly as segment(tile="auto") is."""
    import fcnseg.infer.segment as inference

    monkeypatch.setattr(inference, "AUTO_TILE_PIXELS", 96 * 96)
    monkeypatch.setattr(inference, "AUTO_TILE", 96)
    monkeypatch.setattr(inference, "AUTO_OVERLAP", 32)
    img = smooth_image(160, 200, seed=5)
    seg = segmenter.segment(served[0], img)
    assert seg.tiling == (96, 32)
    model = fcnseg.load_model(ckpts["alpha/best.pt"])
    np.testing.assert_array_equal(seg.labels, fcnseg.segment(model, img, tile=96, overlap=32))
    assert not np.array_equal(seg.labels, fcnseg.segment(model, img))  # tiling did change something
    small = segmenter.segment(served[0], smooth_image(90, 90))
    assert small.tiling is None


def test_downloads_are_the_files_predict_writes(served, ckpts, tmp_path):
    from fcnseg.predict import Outputs, load_runner, predict_file

    img = smooth_image(48, 64, seed=6)
    Image.fromarray(img).save(tmp_path / "photo.png")
    labels = segmenter.segment(served[0], img).labels
    ours = segmenter.write_labels(labels, served[0], tmp_path / "ours.png")
    overlay = segmenter.write_overlay(img, labels, served[0], 0.4, tmp_path / "ours_overlay.png")
    (tmp_path / "pred").mkdir()  # predict_file writes into an existing --out (fcnseg predict makes it)
    predict_file(load_runner(str(ckpts["alpha/best.pt"]), None, "cpu"), tmp_path / "photo.png",
                 Outputs(tmp_path / "pred", alpha=0.4))
    assert ours.read_bytes() == (tmp_path / "pred" / "photo.png").read_bytes()
    assert overlay.read_bytes() == (tmp_path / "pred" / "photo_overlay.png").read_bytes()


def test_onnx_models_are_served_too(ckpts, tmp_path):
    """--model file.onnx: classes and colours from the file's metadata, run by onnxruntime."""
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_onnx
    from fcnseg.infer.onnx_runner import OnnxModel

    onnx_path = tmp_path / "alpha.onnx"
    export_onnx(ckpts["alpha/best.pt"], onnx_path, opset=17)
    (m,) = segmenter.load_models([onnx_path])
    assert m.name == "alpha.onnx" and m.description == "fcn8s_small (modern), ONNX Runtime"
    assert m.class_names == CLASS_NAMES and m.palette[:len(PALETTE)] == PALETTE
    img = smooth_image(48, 64, seed=8)
    np.testing.assert_array_equal(segmenter.segment(m, img).labels, fcnseg.segment(OnnxModel(onnx_path), img))


def test_preview_is_the_blend_capped_in_size(served):
    from fcnseg.infer import visualize

    img = smooth_image(40, 50, seed=7)
    labels = segmenter.segment(served[0], img).labels
    np.testing.assert_array_equal(segmenter.preview(img, labels, served[0], 0.3),
                                  visualize.blend(img, labels, PALETTE, 0.3))
    big = np.zeros((100, 5000, 3), np.uint8)
    assert segmenter.preview(big, np.zeros((100, 5000), np.uint8), served[0], 0.5).shape == (41, 2048, 3)


def test_examples_are_generated_the_same_every_time(tmp_path):
    from fcnseg.data.synthetic import SHAPES

    a = segmenter.make_examples(tmp_path / "a", CLASS_NAMES)
    b = segmenter.make_examples(tmp_path / "b", CLASS_NAMES)
    assert [p.name for p in a] == ["example_1.png", "example_2.png", "example_3.png"]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))
    assert len({p.read_bytes() for p in a}) == 3
    # A model of the synthetic shapes (fcnseg demo) gets examples of its own classes only.
    demo = segmenter.make_examples(tmp_path / "demo", [name for name, _ in SHAPES[:3]], n=3)
    assert [p.read_bytes() for p in demo] != [p.read_bytes() for p in a]
    colours = np.concatenate([data_io.read_image(p).reshape(-1, 3) for p in demo])
    assert not (np.abs(colours.astype(int) - SHAPES[5][1]).sum(1) < 30).any()  # no magenta cross


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.4.5.6", True), ("::1", True),
                                        ("localhost", True), ("0.0.0.0", False), ("::", False),
                                        ("192.168.1.20", False), ("myhost.example", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop
    assert (exposure_warning(host) is None) is loop


def test_loopback_by_default_and_a_warning_otherwise():
    from fcnseg.cli import build_parser

    sys_argv, sys.argv = sys.argv, ["fcnseg", "serve"]
    try:
        args = build_parser().parse_args(["serve", "--checkpoint", "m.pt"])
    finally:
        sys.argv = sys_argv
    assert args.host == "127.0.0.1" and args.port == 7860
    assert exposure_warning("0.0.0.0") == (
        "fcnseg serve: warning: listening on 0.0.0.0, not loopback: anyone who can reach this address "
        "can use the page and its API (no login); use --host 127.0.0.1 to keep it on this machine")


@pytest.mark.parametrize("flags, match", [(["--port", "70000"], r"--port 70000"),
                                          (["--max-pixels", str(2**27 + 1)], r"--max-pixels"),
                                          (["--alpha", "1.5"], r"--alpha 1.5"),
                                          (["--queue-size", "0"], r"--queue-size"),
                                          (["--model", "nowhere/m.onnx"],
                                           r"^--checkpoint nowhere/m\.onnx: no such file; give an fcnseg checkpoint")])
def test_bad_flags_are_refused_before_loading(flags, match, ckpts):
    from fcnseg.cli import build_parser

    sys_argv, sys.argv = sys.argv, ["fcnseg", "serve"]
    try:
        args = build_parser().parse_args(["serve", "--checkpoint", str(ckpts["alpha/best.pt"]), *flags])
    finally:
        sys.argv = sys_argv
    with pytest.raises(ConfigError, match=match):
        check_args(args)


def test_busy_port_is_one_line_before_anything_loads(ckpts, capsys, monkeypatch):
    from fcnseg.cli import main

    # Importing gradio would fail with the install hint: the port is checked before that.
    monkeypatch.setitem(sys.modules, "gradio", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(ckpts["alpha/best.pt"]), "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"fcnseg serve: error: cannot listen on 127.0.0.1:{port} "
                                       f"(Address already in use); choose a free --port, or another --host\n")


def test_missing_gradio_gives_the_install_hint(monkeypatch, capsys, ckpts):
    from fcnseg.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    assert main(["serve", "--checkpoint", str(ckpts["alpha/best.pt"]), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fcnseg serve: error: fcnseg serve needs Gradio: pip install 'fcnseg[serve]'"


# ----------------------------------------------------------------------------- the real server

def _need(condition: bool, what: str) -> None:
    """Skip when something the server tests need is missing; fail instead in CI."""
    if not condition:
        if os.environ.get("FCNSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FCNSEG_REQUIRE_BROWSER=1 but {what}")
        pytest.skip(what)


def test_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("FCNSEG_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match=r"^FCNSEG_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing"):
        _need(False, "/usr/bin/chromium is missing")
    _need(True, "never shown")
    monkeypatch.delenv("FCNSEG_REQUIRE_BROWSER")
    with pytest.raises(pytest.skip.Exception, match=r"^/usr/bin/chromium is missing"):
        _need(False, "/usr/bin/chromium is missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """The local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(str(ipaddress.ip_address(raw)))
    return found


def _mem_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) / 1024
            for k in ("VmRSS", "VmHWM")}


@contextlib.contextmanager
def _serving(ckpts: list[Path], root: Path, *flags: str):
    """Run ``fcnseg serve`` as a subprocess on a free loopback port; yields (url, pid, log)."""
    _need(importlib.util.find_spec("gradio") is not None, "gradio is not installed (pip install 'fcnseg[serve]')")
    port = _free_port()
    log = root / "server.log"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(root / "gradio"), PYTHONUNBUFFERED="1")
    # Any HTTP(S) call the server makes to the outside (telemetry, version checks, fonts, share
    # links) goes through this "proxy", which records it: there must be none.
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen()
    trapped: list[bytes] = []

    def record() -> None:
        while True:
            try:
                conn, _ = trap.accept()
            except OSError:  # closed at the end
                return
            with conn:
                conn.settimeout(2)
                try:
                    trapped.append(conn.recv(200))
                except OSError:
                    trapped.append(b"?")

    threading.Thread(target=record, daemon=True).start()
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[key] = f"http://127.0.0.1:{trap.getsockname()[1]}"
    for key in ("NO_PROXY", "no_proxy"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "fcnseg.cli", "serve", "--port", str(port), *flags]
    for path in ckpts:
        cmd += ["--checkpoint", str(path)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.time() + 180  # importing gradio takes seconds, more on busy cores
        while "fcnseg serve: serving" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"fcnseg serve did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/", proc.pid, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        trap.close()
    assert proc.returncode == 0, log.read_text()
    assert log.read_text().rstrip().endswith("fcnseg serve: stopped"), log.read_text()
    assert trapped == [], f"fcnseg serve made outside requests: {trapped}"


@pytest.fixture(scope="module")
def server(ckpts, tmp_path_factory):
    """The module's server: both checkpoints, a 1 MP upload limit, default queue."""
    with _serving(list(ckpts.values()), tmp_path_factory.mktemp("serve_server"),
                  "--max-pixels", str(SERVER_MAX_PIXELS)) as (url, pid, log):
        assert log.read_text().splitlines()[0] == (
            f"fcnseg serve: serving alpha/best.pt, beta/best.pt at {url} (API: /segment; Ctrl+C to stop)")
        assert _listening(int(url.rsplit(":", 1)[1].strip("/"))) == ["127.0.0.1"]  # not 0.0.0.0
        yield url, pid, log


@pytest.fixture(scope="module")
def browser():
    _need(Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing (apt-get install chromium)")
    _need(importlib.util.find_spec("playwright") is not None, "playwright is not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # The system's Chromium: no browser download (never `playwright install`).
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _wait_done(page, action, timeout: float = 120_000) -> None:
    """Do ``action`` (which queues an event) and wait until the page has no pending output."""
    with page.expect_request(re.compile(r"/queue/join"), timeout=timeout):
        action()
    page.wait_for_function(
        "() => document.querySelectorAll('.pending, .progress-text, .eta-bar').length === 0",
        timeout=timeout)


def _upload(page, path: Path) -> None:
    _wait_done(page, lambda: page.locator("#fcnseg-input input[type=file]").set_input_files(str(path)))


def _download(page, button: str, dest: Path) -> Path:
    with page.expect_download() as d:
        page.click(button)
    d.value.save_as(dest)
    return dest


def _check_result(page, tmp: Path, image: np.ndarray, ckpt: Path, name: str, alpha: float,
                  crf: bool = False) -> np.ndarray:
    """The page shows ``ckpt``'s result for ``image``: palette PNG, overlay, legend, timing."""
    from fcnseg.infer import visualize

    expected = fcnseg.segment(fcnseg.load_model(ckpt), image, crf=crf)  # (H, W) uint8, independent load
    assert page.inner_text("#fcnseg-status").strip() == ""
    labels_png = _download(page, "#fcnseg-download-labels", tmp / f"labels_{time.time_ns()}.png")
    got = data_io.read_mask(labels_png)
    np.testing.assert_array_equal(got, expected)  # pixel for pixel
    with Image.open(labels_png) as im:
        assert im.mode == "P" and im.getpalette()[:3 * len(PALETTE)] == [v for c in PALETTE for v in c]
    # Overlay download: the blend at the slider's opacity, legend strip on the right.
    overlay = np.asarray(Image.open(_download(page, "#fcnseg-download-overlay", tmp / "overlay.png")).convert("RGB"))
    h, w = image.shape[:2]
    np.testing.assert_array_equal(overlay[:h, :w], visualize.blend(image, expected, PALETTE, alpha))
    # What the page displays is that blend too (fetched from the <img> the browser shows).
    src = page.get_attribute("#fcnseg-overlay img", "src")
    shown = np.asarray(Image.open(__import__("io").BytesIO(page.request.get(src).body())).convert("RGB"))
    np.testing.assert_array_equal(shown, visualize.blend(image, expected, PALETTE, alpha))
    # Legend: every class present, its colour and share, largest first.
    counts = np.bincount(expected.ravel(), minlength=len(CLASS_NAMES))
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    rows = page.locator("#fcnseg-legend tr")
    assert rows.count() == len(order)
    for i, c in enumerate(order):
        row = rows.nth(i)
        assert row.get_attribute("data-class") == str(c)
        assert row.inner_text().split("\t")[0].strip() == CLASS_NAMES[c]
        assert row.locator("td.share").inner_text() == f"{100 * counts[c] / expected.size:.1f}%"
        r, g, b = PALETTE[c]
        assert f"rgb({r}, {g}, {b})" in row.locator(".fcnseg-swatch").get_attribute("style")
    timing = page.inner_text("#fcnseg-timing")
    assert re.fullmatch(rf"{re.escape(name)} segmented {w}x{h} px \(whole image"
                        rf"{', dense CRF' if crf else ''}\) in \d+ ms; "
                        rf"request \d+ ms", timing.strip()), timing
    return expected


def test_page_in_chromium(server, browser, ckpts, tmp_path):
    """Upload -> overlay, legend and palette PNG equal to fcnseg.segment(); broken uploads give
    one readable line and the page keeps working; slider, model picker and examples work."""
    url, pid, log = server
    page = browser.new_page(viewport={"width": 1280, "height": 960}, accept_downloads=True)
    outside = []  # requests leaving this machine: there must be none (no CDN, no telemetry)
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else outside.append(r.url))
    page.goto(url)
    page.wait_for_selector("#fcnseg-input input[type=file]", state="attached", timeout=60_000)
    assert page.title() == "fcnseg serve"
    info = page.inner_text("#fcnseg-model-info")
    assert "alpha/best.pt: fcn8s_small (modern), PyTorch on cpu. 5 classes:" in info
    assert "green/thing" in info  # class names from the checkpoint, HTML-escaped, not lost

    image = smooth_image(120, 160, seed=3)
    good = tmp_path / "street.png"
    Image.fromarray(image).save(good)
    _upload(page, good)
    _check_result(page, tmp_path, image, ckpts["alpha/best.pt"], "alpha/best.pt", 0.5)

    # Broken uploads: one line naming the file, the problem and the fix; results cleared.
    bad = _truncated_jpeg(tmp_path / "broken.jpg")
    _upload(page, bad)
    status = page.inner_text("#fcnseg-status").strip()
    assert re.fullmatch(r"image file broken\.jpg is truncated or corrupt \(.*\); re-download or "
                        r"re-export it", status), status
    assert not page.locator("#fcnseg-download-labels").is_visible()
    assert page.locator("#fcnseg-legend tr").count() == 0
    (tmp_path / "empty.jpg").write_bytes(b"")
    _upload(page, tmp_path / "empty.jpg")
    assert page.inner_text("#fcnseg-status").strip() == (
        "empty.jpg is empty (0 bytes); upload an image file (JPEG, PNG, WebP, ...)")
    huge = png_header_only(tmp_path / "huge.png", 2000, 1000, mode_byte=2)
    _upload(page, huge)
    assert page.inner_text("#fcnseg-status").strip() == (
        "huge.png is 2000x1000 pixels (2 MP), above this server's limit of 1 MP; resize it, "
        "or restart fcnseg serve with a larger --max-pixels")

    # ... and a good upload after them works again.
    _upload(page, good)
    _check_result(page, tmp_path, image, ckpts["alpha/best.pt"], "alpha/best.pt", 0.5)

    # Opacity: re-blended from the labels already computed.
    box = page.locator("#fcnseg-alpha input[type=range]").bounding_box()
    _wait_done(page, lambda: page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + box["height"] / 2))
    alpha = float(page.locator("#fcnseg-alpha input[type=number]").input_value())
    assert 0.7 <= alpha <= 0.9  # where the pointer released it (to a 0.05 step)
    _check_result(page, tmp_path, image, ckpts["alpha/best.pt"], "alpha/best.pt", alpha)

    # Model picker: the other checkpoint's result for the same photo.
    page.click("#fcnseg-model input")
    _wait_done(page, lambda: page.get_by_role("option", name="beta/best.pt").click())
    assert "beta/best.pt: fcn8s_small" in page.inner_text("#fcnseg-model-info")
    beta = _check_result(page, tmp_path, image, ckpts["beta/best.pt"], "beta/best.pt", alpha)
    assert not np.array_equal(beta, fcnseg.segment(fcnseg.load_model(ckpts["alpha/best.pt"]), image))

    # An example photo (generated at start-up, no download).
    example = data_io.read_image(segmenter.make_examples(tmp_path / "examples", CLASS_NAMES)[0])
    _wait_done(page, lambda: page.locator("#fcnseg-examples button.gallery-item").first.click())
    _check_result(page, tmp_path, example, ckpts["beta/best.pt"], "beta/best.pt", alpha)

    # Dense-CRF refinement (the toggle shows because pydensecrf2 is installed here).
    if segmenter.crf_available():
        _wait_done(page, lambda: page.locator("#fcnseg-crf input").check())
        _check_result(page, tmp_path, example, ckpts["beta/best.pt"], "beta/best.pt", alpha, crf=True)
    else:
        assert not page.locator("#fcnseg-crf").is_visible()

    shot = Path(os.environ.get("FCNSEG_SERVE_SCREENSHOT", tmp_path / "serve.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert outside == []
    page.close()


def test_api_50_concurrent_requests(server, ckpts, tmp_path):
    """50 requests at once through gradio_client: every answer right, server memory flat."""
    _need(importlib.util.find_spec("gradio_client") is not None, "gradio_client is not installed")
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, pid, log = server
    model = fcnseg.load_model(ckpts["alpha/best.pt"])
    images = [smooth_image(480, 640, seed=20 + i) for i in range(5)]
    paths = []
    for i, a in enumerate(images):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(a).save(paths[-1])
    expected = [fcnseg.segment(model, a) for a in images]
    client = Client(url, verbose=False, max_workers=50, download_files=str(tmp_path / "dl"),
                    httpx_kwargs={"timeout": 300})
    before = _mem_mb(pid)
    t0 = time.time()
    jobs = [client.submit(handle_file(str(paths[i % 5])), api_name="/segment") for i in range(50)]
    results = [job.result(timeout=600) for job in jobs]
    seconds = time.time() - t0
    after = _mem_mb(pid)
    for i, path in enumerate(results):
        np.testing.assert_array_equal(data_io.read_mask(path), expected[i % 5])
    print(f"\nserve load test: 50 concurrent /segment requests (640x480) in {seconds:.1f} s; server "
          f"VmRSS {before['VmRSS']:.0f} -> {after['VmRSS']:.0f} MiB, VmHWM {before['VmHWM']:.0f} -> "
          f"{after['VmHWM']:.0f} MiB")
    # Bound: with one inference at a time (--concurrency 1, the default) the peak grew by 120-160
    # MiB in our runs (Gradio's threads, buffers and allocator arenas included); the same load on
    # a server running them all at once (--concurrency 50) grew it by 527 MiB (2-core VM, 2026-12).
    assert after["VmHWM"] - before["VmRSS"] < 250, (before, after)

    with pytest.raises(AppError, match=r"image file broken\.jpg is truncated or corrupt"):
        client.predict(handle_file(str(_truncated_jpeg(tmp_path / "broken.jpg"))), api_name="/segment")
    with pytest.raises(AppError, match=r"unknown model 'nope'; choose one of alpha/best\.pt, beta/best\.pt"):
        client.predict(handle_file(str(paths[0])), model="nope", api_name="/segment")
    beta = client.predict(handle_file(str(paths[1])), model="beta/best.pt", api_name="/segment")
    np.testing.assert_array_equal(data_io.read_mask(beta),
                                  fcnseg.segment(fcnseg.load_model(ckpts["beta/best.pt"]), images[1]))
    assert not np.array_equal(data_io.read_mask(beta), expected[1])


def test_bounded_queue_refuses_the_excess_and_keeps_serving(ckpts, tmp_path):
    """--queue-size 2: of 12 simultaneous slow requests, those past the bound are refused at once
    ("Queue is full"), the others are answered correctly, and the server serves on."""
    _need(importlib.util.find_spec("gradio_client") is not None, "gradio_client is not installed")
    if not segmenter.crf_available():
        pytest.skip("needs pydensecrf2: the dense CRF makes each request slow enough to fill the queue")
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    image = smooth_image(300, 400, seed=30)
    Image.fromarray(image).save(tmp_path / "big.png")
    model = fcnseg.load_model(ckpts["alpha/best.pt"])
    expected = fcnseg.segment(model, image, crf=True)
    with _serving([ckpts["alpha/best.pt"]], tmp_path, "--queue-size", "2") as (url, pid, log):
        client = Client(url, verbose=False, max_workers=12, download_files=str(tmp_path / "dl"),
                        httpx_kwargs={"timeout": 300})
        t0 = time.time()
        jobs = [client.submit(handle_file(str(tmp_path / "big.png")), crf=True, api_name="/segment")
                for _ in range(12)]
        answered = refused = 0
        for job in jobs:
            try:
                path = job.result(timeout=600)
            except QueueError as e:
                assert str(e) == "Queue is full! Please try again."
                refused += 1
            else:
                np.testing.assert_array_equal(data_io.read_mask(path), expected)
                answered += 1
        print(f"\nqueue bound 2: {answered} of 12 answered, {refused} refused, {time.time() - t0:.1f} s")
        assert answered >= 1 and refused >= 1 and answered + refused == 12
        later = client.predict(handle_file(str(tmp_path / "big.png")), api_name="/segment")
        np.testing.assert_array_equal(data_io.read_mask(later), fcnseg.segment(model, image))
