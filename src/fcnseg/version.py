"""Which code is running: the package version and, in a source checkout, ``git describe``."""
from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def git_describe() -> str | None:
    """``git describe --always --dirty`` of the fcnseg source tree, or None (not a checkout, no git)."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=src, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
