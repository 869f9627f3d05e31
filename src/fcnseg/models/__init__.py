"""Models: backbones, FCN 32s/16s/8s heads, U-Net, surgery, registry."""
from fcnseg.models.backbones import BACKBONES, Backbone
from fcnseg.models.fcn import FCN
from fcnseg.models.flops import count_flops, count_params
from fcnseg.models.registry import build_model, list_models, register_model
from fcnseg.models.surgery import (
    convert_classifier_state_dict,
    convolutionalize,
    load_backbone_weights,
    load_state_dict_checked,
    upgrade,
)
from fcnseg.models.unet import UNet

__all__ = ["BACKBONES", "Backbone", "FCN", "UNet", "build_model", "list_models", "register_model",
           "convert_classifier_state_dict", "convolutionalize", "load_backbone_weights",
           "load_state_dict_checked", "upgrade", "count_flops", "count_params"]
