"""The CI guard: a skip for a missing package fails under FCNSEG_REQUIRE_EXTRAS=1, other skips do not."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_needs_a_missing_package():
    pytest.importorskip("fcnseg_no_such_package_xyz")

def test_skipped_for_another_reason():
    pytest.skip("this CPU has no AMX")

def test_passes():
    assert True
'''
MODULE_SKIP = '''
import pytest
pytest.importorskip("fcnseg_no_such_package_xyz")

def test_never_runs():
    assert True
'''


def _run(tmp_path: Path, required: bool, *files: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("FCNSEG_REQUIRE_EXTRAS", None)
    if required:
        env["FCNSEG_REQUIRE_EXTRAS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "require_extras", "-p", "no:cacheprovider",
                           "-rA", *files], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_missing_package_skips_fail_only_when_required(tmp_path):
    res = _run(tmp_path, True, "test_sample.py")
    assert res.returncode == 1, res.stdout
    assert "1 failed, 1 passed, 1 skipped" in res.stdout, res.stdout
    assert "FAILED test_sample.py::test_needs_a_missing_package" in res.stdout
    assert "FCNSEG_REQUIRE_EXTRAS=1 (set by .ci/run)" in res.stdout
    assert "SKIPPED [1] test_sample.py" in res.stdout and "no AMX" in res.stdout  # other skips stay skips

    res = _run(tmp_path, True, "test_module_skip.py")  # a whole module skipped at import: collection error
    assert res.returncode == 2 and "ERROR test_module_skip.py" in res.stdout, res.stdout

    res = _run(tmp_path, False, "test_sample.py", "test_module_skip.py")
    assert res.returncode == 0, res.stdout
    assert "1 passed, 3 skipped" in res.stdout, res.stdout
