"""Models: backbones, FCN 32s/16s/8s heads, U-Net, the registry of model names, surgery and staging.

Architecture: :mod:`.backbones`, :mod:`.geometry`, :mod:`.fcn`, :mod:`.unet`, :mod:`.input_convention`,
:mod:`.score_conv` (the score layers as GEMMs on CPU),
:mod:`.dilated_resnet` (torchvision's dilated-ResNet FCN, family ``"dilated"``).
Machinery: :mod:`.registry` (+ :mod:`.zoo`, one entry per model name), :mod:`.surgery`
(state dicts), :mod:`.classifier_head`, :mod:`.staging`, :mod:`.relabel` (another label set),
:mod:`.flops`, :mod:`.fastpath`, :mod:`.table` (``fcnseg models``).
"""
from fcnseg.models import zoo  # noqa: F401  (registers every model name)
from fcnseg.models.backbones import BACKBONES, Backbone
from fcnseg.models.classifier_head import convolutionalize
from fcnseg.models.fcn import FCN
from fcnseg.models.flops import count_flops, count_params
from fcnseg.models.registry import build_model, list_models, model_family, register_model
from fcnseg.models.staging import upgrade
from fcnseg.models.surgery import convert_classifier_state_dict, load_backbone_weights, load_state_dict_checked
from fcnseg.models.unet import UNet

__all__ = ["BACKBONES", "Backbone", "FCN", "UNet", "build_model", "list_models", "model_family", "register_model",
           "convert_classifier_state_dict", "convolutionalize", "load_backbone_weights",
           "load_state_dict_checked", "upgrade", "count_flops", "count_params"]
