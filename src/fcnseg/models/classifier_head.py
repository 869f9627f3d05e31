"""A classifier made fully convolutional as a whole: image -> class scores at stride 32 (the paper's Sec. 3.1).

:func:`convolutionalize` turns a torchvision-layout classifier state dict into a net whose
output at stride 32 is the classifier's 1000-way score, slid over the image.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from fcnseg.models.backbones import BACKBONES
from fcnseg.models.input_convention import STANDARD, ConvertInput
from fcnseg.models.surgery import (convert_classifier_state_dict, load_state_dict_checked, pooled_head_key,
                                   unwrap_state_dict)


class ConvolutionalClassifier(nn.Module):
    """A classifier turned fully convolutional: image -> class scores at stride 32.

    VGG16/AlexNet: features -> fc6 (kxk conv) -> fc7 (1x1) -> fc8 (1x1). ResNets and
    EfficientNets: body -> 7x7 average pool at stride 1 -> fc (``_fc``) as a 1x1 conv. On a
    224x224 input the output is 1x1 and equals the classifier's logits; on a larger input it
    is the classifier slid over the image at stride 32. Callers pass the standard input, as
    to FCNs: ``prepare_input`` converts it to the backbone's default input convention.
    """

    def __init__(self, arch: str, backbone: nn.Module, num_outputs: int) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = backbone
        cin = backbone.feature_channels[32]
        self.head_key = pooled_head_key(arch) or "fc8"
        self.prepare_input = ConvertInput(getattr(backbone, "default_input_convention", STANDARD))
        # the global average pool over the 7x7 map of a 224 input, slid at stride 1
        self.pool = nn.AvgPool2d(7, 1) if pooled_head_key(arch) else nn.Identity()
        setattr(self, self.head_key, nn.Conv2d(cin, num_outputs, 1))

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(self.prepare_input(x))[self.backbone.feature_names[32]]  # (B, C, h, w)
        f = self.pool(f)  # (B, C, h - 6, w - 6) after the 7x7 pool (pooled heads)
        return getattr(self, self.head_key)(f)  # (B, num_outputs, ., .)


def convolutionalize(arch: str, state_dict: Mapping[str, Tensor]) -> ConvolutionalClassifier:
    """Build the fully convolutional version of a torchvision-layout classifier."""
    backbone = BACKBONES[arch](geometry="classifier")
    sd = convert_classifier_state_dict(arch, unwrap_state_dict(state_dict, arch), keep_fc8=True)
    head_key = pooled_head_key(arch) or "fc8"
    num_outputs = sd[f"{head_key}.weight"].shape[0]
    model = ConvolutionalClassifier(arch, backbone, num_outputs)
    head = {k: v for k, v in sd.items() if k.startswith(head_key + ".")}
    body = {k: v for k, v in sd.items() if not k.startswith(head_key + ".")}
    load_state_dict_checked(backbone, body, source=f"{arch} classifier")
    getattr(model, head_key).load_state_dict({k.split(".", 1)[1]: v for k, v in head.items()})
    return model.eval()
