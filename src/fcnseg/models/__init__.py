"""FCN models: backbones, 32s/16s/8s heads, surgery, registry."""
from fcnseg.models.backbones import BACKBONES, Backbone
from fcnseg.models.fcn import FCN
from fcnseg.models.flops import count_flops, count_params
from fcnseg.models.registry import build_model, list_models, model_family, register_model
from fcnseg.models import dilated_resnet  # noqa: E402,F401  (registers fcn_resnet*_dilated)
from fcnseg.models.surgery import (
    convert_classifier_state_dict,
    convolutionalize,
    load_backbone_weights,
    load_state_dict_checked,
    upgrade,
)

__all__ = ["BACKBONES", "Backbone", "FCN", "build_model", "list_models", "model_family", "register_model",
           "convert_classifier_state_dict", "convolutionalize", "load_backbone_weights",
           "load_state_dict_checked", "upgrade", "count_flops", "count_params"]
