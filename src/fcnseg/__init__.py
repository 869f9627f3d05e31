"""fcnseg: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer, Darrell).

Public API::

    import fcnseg
    fcnseg.list_models()
    model = fcnseg.build_model("fcn8s_vgg16", num_classes=21, geometry="modern")
    model = fcnseg.load_model("runs/x/best.pt")          # trained checkpoint
    labels = fcnseg.segment(model, pil_image_or_array)   # (H, W) class indices
"""
from __future__ import annotations

from fcnseg.version import __version__

__all__ = ["__version__", "list_models", "build_model", "load_model", "segment"]


def __getattr__(name: str):
    # Lazy: `import fcnseg` stays cheap, and the ONNX runtime path never imports torch models.
    if name in ("list_models", "build_model"):
        from fcnseg import models  # lazy: see above

        return getattr(models, name)
    if name in ("load_model", "segment"):
        from fcnseg import api  # lazy: see above

        return getattr(api, name)
    raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")
