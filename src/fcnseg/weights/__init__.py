"""Pretrained weights: a catalog of known files, torch-hub cache downloads, and importers."""
