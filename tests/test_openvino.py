"""Runs tests/openvino_cases.py (OpenVINO export, runtime, precision-table rows) in a pytest process
of its own: OpenVINO's CPU plugin leaves worker threads behind in the process that used it, and
with them the main suite crashed (SIGSEGV) in a later test that starts subprocesses. The cases'
own skips (openvino not installed) and FCNSEG_REQUIRE_EXTRAS carry over: the child gets this
environment, and its exit status and output decide this test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'fcnseg[openvino]')")

TESTS = Path(__file__).resolve().parent


def test_openvino_cases_in_their_own_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           str(TESTS / "openvino_cases.py")], capture_output=True, text=True, timeout=900,
                          env=env, cwd=TESTS.parent)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout and "skipped" not in proc.stdout, tail
