"""Pretrained weights: a catalog of known files, torch-hub cache downloads, files inside pip
packages, and importers from other frameworks (Caffe, pytorch-fcn, torchvision)."""
