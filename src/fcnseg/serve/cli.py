"""``fcnseg serve``: serve checkpoints (or exported ONNX models) on a web page.

    fcnseg serve --checkpoint runs/voc8s/best.pt [--checkpoint other.pt] [--model m.onnx] \\
        [--host 127.0.0.1] [--port 7860] [--max-pixels 50000000]

Listens on loopback (127.0.0.1) unless another ``--host`` is asked for; then it warns that
anyone who can reach the address can use the page. No share links, no telemetry, no
requests to the internet (fonts are Gradio's local copies).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import time
from pathlib import Path

from fcnseg.data.image_files import MAX_PIXELS
from fcnseg.errors import ConfigError
from fcnseg.infer.segment import AUTO_TILE_PIXELS
from fcnseg.serve import segmenter
from fcnseg.serve.segmenter import DEFAULT_MAX_PIXELS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
INSTALL_HINT = "fcnseg serve needs Gradio: pip install 'fcnseg[serve]'"


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--model", dest="models", action="append", required=True,
                   metavar="CKPT", help="fcnseg checkpoint (.pt) or exported .onnx model; repeat "
                                        "for a model picker")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}, this machine only; "
                        f"0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse larger images (default {DEFAULT_MAX_PIXELS}; images above "
                        f"{AUTO_TILE_PIXELS / 1e6:.1f} MP go through tiled inference)")
    p.add_argument("--max-file-mb", type=float, default=100.0, metavar="MB",
                   help="largest upload in MB (default 100)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="requests allowed to wait; more are refused with 'queue full' (default 64)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="inferences run at once (default 1: each already uses all cores)")
    p.add_argument("--alpha", type=float, default=0.5, help="initial overlay opacity (default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to a public interface
        return False


def exposure_warning(host: str) -> str | None:
    """The warning line for an address other machines can reach, or None for loopback."""
    if is_loopback(host):
        return None
    return (f"fcnseg serve: warning: listening on {host}, not loopback: anyone who can reach this "
            f"address can use the page and its API (no login); use --host 127.0.0.1 to keep it on "
            f"this machine")


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything is loaded."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: give a port between 1 and 65535 (default {DEFAULT_PORT})")
    if not 1 <= args.max_pixels <= MAX_PIXELS:
        raise ConfigError(f"--max-pixels {args.max_pixels}: give 1..{MAX_PIXELS} "
                          f"(fcnseg.data.image_files.MAX_PIXELS, the most fcnseg decodes)")
    if args.max_file_mb <= 0:
        raise ConfigError(f"--max-file-mb {args.max_file_mb}: must be positive")
    if args.queue_size < 1 or args.concurrency < 1:
        raise ConfigError("--queue-size and --concurrency must be at least 1")
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha {args.alpha}: must be between 0 and 1")
    for path in args.models:
        if not Path(path).is_file():
            raise ConfigError(f"--checkpoint {path}: no such file; give an fcnseg checkpoint (.pt, "
                              f"e.g. runs/demo/train/best.pt) or an exported .onnx model")


def check_port_free(host: str, port: int) -> None:
    """Fail fast, before the slow start-up, if ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself will
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose a free "
                              f"--port, or another --host") from None


def import_gradio():
    """Import gradio with its telemetry off, or raise a ConfigError with the install hint."""
    # Set before the import: no analytics or version check calls (there may be no internet).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Gradio calls its own local URL at start-up: a user's HTTP(S)_PROXY must not take that call.
    for key in ("NO_PROXY", "no_proxy"):
        os.environ[key] = ",".join(filter(None, [os.environ.get(key), "localhost,127.0.0.1,::1"]))
    try:
        import gradio  # heavy (seconds to import) and optional: only this command needs it
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return gradio


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cli_main(args: argparse.Namespace) -> int:
    check_args(args)
    check_port_free(args.host, args.port)
    import_gradio()
    # Lazy: the page module imports gradio at its top (seconds, optional), after import_gradio's
    # environment and install hint.
    from fcnseg.serve.page import CSS, PageConfig, build_page

    models = segmenter.load_models(args.models, device=args.device)
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    scratch = segmenter.Scratch()
    try:
        page = build_page(models, scratch, PageConfig(args.max_pixels, args.alpha, args.concurrency))
        page.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
        try:
            page.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                        prevent_thread_lock=True, quiet=True, show_error=True, ssr_mode=False,
                        pwa=False, mcp_server=False, enable_monitoring=False,
                        max_file_size=int(args.max_file_mb * 1e6), css=CSS,
                        footer_links=["api", "settings"], run_history=False)
        except OSError:  # taken since check_port_free (Gradio's own message names launch())
            raise ConfigError(f"cannot listen on {args.host}:{args.port} (taken meanwhile); choose a "
                              f"free --port, or another --host") from None
        url_host = f"[{args.host}]" if ":" in args.host else args.host
        names = ", ".join(m.name for m in models)
        print(f"fcnseg serve: serving {names} at http://{url_host}:{args.port}/ "
              f"(API: /segment; Ctrl+C to stop)", flush=True)
        # SIGTERM (e.g. from a service manager) stops as cleanly as Ctrl+C.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while page.is_running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
        print("fcnseg serve: stopped", flush=True)
    finally:
        scratch.cleanup()
    return 0
