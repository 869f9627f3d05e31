"""Pretrained weights: importers from other frameworks and known weight files."""
