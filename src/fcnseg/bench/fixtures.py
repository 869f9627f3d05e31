"""The models and inputs a bench run times: randomly initialised FCNs, real or seeded images,
and torchvision's ``fcn_resnet50`` for the CUDA comparison."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fcnseg.bench.variants import VariantSkipped
from fcnseg.data.datasets import open_dataset
from fcnseg.data.transforms import eval_transforms
from fcnseg.models import build_model


def random_model(name: str, num_classes: int, geometry: str = "modern", seed: int = 0,
                 **model_kwargs) -> nn.Module:
    """``build_model`` with He-initialised convolutions (zero-initialised score layers would
    give all-zero logits, and argmax agreement would be trivially 100%). Eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes, geometry=geometry, **model_kwargs)
    for m in model.modules():
        if type(m) is nn.Conv2d:  # transposed convs keep their bilinear kernels
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.eval()


def example_batch(size: tuple[int, int], batch: int, data: str | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(B, 3, H, W)`` normalised images: camvid val images cropped/padded to ``size`` when the
    dataset is there (realistic activations for the agreement check), else seeded noise."""
    H, W = size
    if data and Path(data).is_dir():
        ds = open_dataset(data, "val", eval_transforms())
        x = torch.zeros(batch, 3, H, W)
        for i in range(batch):
            img, _ = ds[i % len(ds)]  # (3, h, w)
            h, w = min(H, img.shape[1]), min(W, img.shape[2])
            x[i, :, :h, :w] = img[:, :h, :w]  # zero padding = the mean colour after normalising
        return x, f"{data} val images 0..{batch - 1}, cropped/zero-padded to {H}x{W}"
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, H, W, generator=gen), "seeded standard normal noise (no dataset)"


class _OutOnly(nn.Module):
    """torchvision segmentation models return ``{"out": logits, ...}``; keep the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def torchvision_fcn_resnet50(num_classes: int) -> nn.Module:
    """torchvision's ``fcn_resnet50`` (random weights), for the CUDA comparison only.

    Imported here and only here: torchvision does not load with the CPU torch build this
    project develops on. Raises VariantSkipped if it cannot be imported.
    """
    try:
        from torchvision.models.segmentation import fcn_resnet50  # optional, CUDA comparison only (see above)
    except (ImportError, RuntimeError, AttributeError) as e:  # absent, or built for another torch
        raise VariantSkipped(f"torchvision not importable ({type(e).__name__}: {str(e)[:200]})") from None
    torch.manual_seed(0)
    return _OutOnly(fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes,
                                 aux_loss=False)).eval()
