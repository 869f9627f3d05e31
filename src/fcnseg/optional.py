"""Optional dependencies: import one, or fail with one line naming the extra to install.

fcnseg's core needs torch, numpy, Pillow, tqdm and matplotlib. Everything else is an
extra of ``pyproject.toml`` (``pip install 'fcnseg[onnx]'`` ...) and is imported only where
it is used, through :func:`require`, so a missing package gives

    fcnseg export: error: ONNX export needs the optional package onnx, which is not installed:
    pip install 'fcnseg[onnx]' (or pip install onnx)

instead of a ``ModuleNotFoundError`` traceback. This module imports nothing heavy (the ONNX
runtime path must stay torch-free).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from fcnseg.errors import ConfigError

# import name (top-level module) -> (pip package, fcnseg extra); the extras are pyproject's.
OPTIONAL: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "pydensecrf": ("pydensecrf2", "crf"),
    "scipy": ("scipy", "sbd"),
    "safetensors": ("safetensors", "safetensors"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
}


class MissingDependencyError(ConfigError):
    """An optional package that a requested feature needs is not installed (or broken)."""


def install_hint(module: str) -> str:
    """``pip install 'fcnseg[extra]' (or pip install pkg)`` for the optional ``module``."""
    top = module.split(".")[0]
    pip_name, extra = OPTIONAL.get(top, (top, None))
    if extra is None:
        return f"pip install {pip_name}"
    return f"pip install 'fcnseg[{extra}]' (or pip install {pip_name})"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"onnx"``, ``"pydensecrf.densecrf"``) or raise
    :class:`MissingDependencyError` saying that ``purpose`` needs it and how to install it.

    ``purpose`` completes "<purpose> needs the optional package ...", e.g. "ONNX export".
    A package that is installed but fails to import (a missing dependency of its own) is
    reported with the underlying error, since reinstalling is then the fix.
    """
    top = module.split(".")[0]
    pip_name = OPTIONAL.get(top, (top, None))[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # e.name is the module that could not be found: ours (not installed, or blocked with
        # sys.modules[name] = None) or one of its own dependencies (a broken install).
        if e.name is None or e.name == top or e.name.startswith(top + "."):
            raise MissingDependencyError(f"{purpose} needs the optional package {pip_name}, which is not "
                                         f"installed: {install_hint(top)}") from None
        raise MissingDependencyError(f"{purpose} needs {pip_name}, which is installed but fails to import "
                                     f"({type(e).__name__}: {e}); reinstall it: {install_hint(top)}") from None


def available(module: str) -> bool:
    """Whether ``module`` imports (for choosing between code paths, not for errors)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


__all__ = ["OPTIONAL", "MissingDependencyError", "install_hint", "require", "available"]
