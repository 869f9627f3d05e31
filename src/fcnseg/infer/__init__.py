"""Inference on numpy images, for any runtime: runners, whole-image and tiled segmentation,
dense-CRF refinement, the ONNX and OpenVINO runners, and pictures of predictions.

- :mod:`.runner`: the runner contract (numpy in, numpy logits out) and :func:`.runner.as_runner`;
  :mod:`.torch_runner` (an ``nn.Module``), :mod:`.onnx_runner` (an exported ``.onnx`` file) and
  :mod:`.openvino_runner` (an exported OpenVINO ``.xml`` + ``.bin``) implement it.
- :mod:`.arrays`: image checks, ImageNet normalisation, softmax.
- :mod:`.segment`: whole-image and tiled (bounded memory) segmentation, optional CRF.
- :mod:`.crf`: dense CRF (pydensecrf2, optional).
- :mod:`.visualize`: overlays with a legend, heatmaps, error panels.

Everything here but :mod:`.torch_runner` is numpy-only: the ONNX and OpenVINO paths never import torch.
"""
