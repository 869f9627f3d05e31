"""A missing optional package gives one line naming the extra to install, through the CLI,
and every import of an optional package goes through fcnseg.optional."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from _engine_utils import TINY_ARGS, random_head_checkpoint
from _predict_utils import smooth_image, write_image
from fcnseg.optional import OPTIONAL, MissingDependencyError, install_hint, require

SRC = Path(__file__).resolve().parents[1] / "src" / "fcnseg"


def _block(monkeypatch, *modules: str) -> None:
    """Make ``import MODULE`` fail as if the package were not installed (None in sys.modules)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    rc = main(list(args))
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_export_without_onnx(tmp_path, monkeypatch, capsys):
    ckpt = random_head_checkpoint(tmp_path / "c.pt")
    _block(monkeypatch, "onnx")
    rc, err = _cli(monkeypatch, capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert rc == 2
    assert _one_line(err) == ("fcnseg export: error: ONNX export needs the optional package onnx, which is not "
                              "installed: pip install 'fcnseg[onnx]' (or pip install onnx)")
    assert not (tmp_path / "m.onnx").exists()


def test_export_without_onnxruntime(tmp_path, monkeypatch, capsys):
    ckpt = random_head_checkpoint(tmp_path / "c.pt")
    _block(monkeypatch, "onnxruntime")
    rc, err = _cli(monkeypatch, capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert rc == 2 and "pip install 'fcnseg[onnx]' (or pip install onnxruntime)" in _one_line(err)


def test_predict_onnx_model_without_onnxruntime(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07")  # never opened: the runtime import fails first
    photo = write_image(tmp_path / "a.png", smooth_image(16, 16))
    _block(monkeypatch, "onnxruntime")
    rc, err = _cli(monkeypatch, capsys, "predict", "--model", str(model), str(photo), "--out", str(tmp_path / "o"))
    assert rc == 2
    assert _one_line(err) == ("fcnseg predict: error: running an ONNX model needs the optional package "
                              "onnxruntime, which is not installed: pip install 'fcnseg[onnx]' "
                              "(or pip install onnxruntime)")


def test_predict_crf_without_pydensecrf(tmp_path, monkeypatch, capsys):
    ckpt = random_head_checkpoint(tmp_path / "c.pt")
    photo = write_image(tmp_path / "a.png", smooth_image(16, 16))
    _block(monkeypatch, "pydensecrf", "pydensecrf.densecrf")
    rc, err = _cli(monkeypatch, capsys, "predict", "--checkpoint", str(ckpt), str(photo), "--crf",
                   "--out", str(tmp_path / "o"))
    assert rc == 2
    assert _one_line(err) == ("fcnseg predict: error: CRF refinement (--crf) needs the optional package "
                              "pydensecrf2, which is not installed: pip install 'fcnseg[crf]' "
                              "(or pip install pydensecrf2)")
    assert not (tmp_path / "o").exists()


def test_train_sbd_without_scipy(synthetic_voc, tmp_path, monkeypatch, capsys):
    sbd = tmp_path / "sbd"
    (sbd / "cls").mkdir(parents=True)
    _block(monkeypatch, "scipy", "scipy.io")
    rc, err = _cli(monkeypatch, capsys, "train", "--data", str(synthetic_voc), "--sbd", str(sbd),
                   "--out", str(tmp_path / "run"), "--iters", "1", *TINY_ARGS)
    assert rc == 2
    assert "needs the optional package scipy, which is not installed: pip install 'fcnseg[sbd]'" in _one_line(err)


def test_safetensors_weights_without_safetensors(synthetic_voc, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "bb.safetensors"
    weights.write_bytes(b"{}")
    _block(monkeypatch, "safetensors", "safetensors.torch")
    rc, err = _cli(monkeypatch, capsys, "train", "--data", str(synthetic_voc), "--backbone-weights", str(weights),
                   "--out", str(tmp_path / "run"), "--iters", "1", *TINY_ARGS)
    assert rc == 2
    assert _one_line(err) == (f"fcnseg train: error: reading {weights} (.safetensors) needs the optional package "
                              f"safetensors, which is not installed: pip install 'fcnseg[safetensors]' "
                              f"(or pip install safetensors)")


def test_require_reports_a_broken_install(monkeypatch):
    import importlib

    def broken(name, *a, **k):
        raise ModuleNotFoundError("No module named 'google.protobuf'", name="google.protobuf")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(MissingDependencyError, match=r"ONNX export needs onnx, which is installed but fails to "
                                                     r"import .*google\.protobuf.*reinstall it"):
        require("onnx", "ONNX export")


def test_every_extra_exists_in_pyproject():
    text = (SRC.parents[1] / "pyproject.toml").read_text()
    for module, (pip_name, extra) in OPTIONAL.items():
        assert f"\n{extra} = [" in text, extra
        section = text.split(f"\n{extra} = [", 1)[1].split("]", 1)[0]
        assert f'"{pip_name}' in section, (module, extra)
        assert f"fcnseg[{extra}]" in install_hint(module)


def test_optional_packages_are_imported_only_through_the_helper():
    """`import onnx` & co. anywhere but fcnseg.optional would bring the raw ModuleNotFoundError back.
    Allowed: an import right after an `available(...)` check (the bench's version probe and backend)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "optional.py":
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] in OPTIONAL:
                    before = "\n".join(source.splitlines()[max(0, node.lineno - 6):node.lineno])
                    if "available(" not in before:
                        line = source.splitlines()[node.lineno - 1].strip()
                        offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {line}")
    assert not offenders, offenders
