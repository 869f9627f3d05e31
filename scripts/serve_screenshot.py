"""Screenshot of the ``fcnseg serve`` page, for the README (docs/serve.png).

    python scripts/serve_screenshot.py --checkpoint runs/demo/train/best.pt --out docs/serve.png

Starts ``fcnseg serve`` on a free loopback port, opens the page in the system's Chromium
(Playwright, headless; never downloads a browser), segments the first example photo and saves
a screenshot of the whole page. Needs ``pip install 'fcnseg[serve,dev]'`` and /usr/bin/chromium.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint or .onnx model to serve")
    p.add_argument("--out", default="docs/serve.png", help="where to save the PNG")
    p.add_argument("--example", type=int, default=1, help="which example photo to segment (1-based)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        env = dict(os.environ, GRADIO_TEMP_DIR=str(Path(tmp) / "gradio"), PYTHONUNBUFFERED="1")
        with open(log, "w") as f:
            server = subprocess.Popen([sys.executable, "-m", "fcnseg.cli", "serve", "--checkpoint",
                                       args.checkpoint, "--port", str(port), "--alpha", str(args.alpha)],
                                      stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 300
            while "fcnseg serve: serving" not in log.read_text():
                if server.poll() is not None or time.time() > deadline:
                    sys.exit(f"serve_screenshot: fcnseg serve did not start:\n{log.read_text()}")
                time.sleep(0.2)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu",
                                                   "--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#fcnseg-examples button.gallery-item").nth(args.example - 1).click()
                page.wait_for_selector("#fcnseg-legend tr", timeout=300_000)
                page.wait_for_function("() => document.querySelectorAll('.pending, .progress-text').length === 0")
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out, full_page=True)
                browser.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print(f"serve_screenshot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
