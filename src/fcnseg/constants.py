"""Constants shared across fcnseg: input statistics, the ignore label, file suffixes, VOC names.

Imports nothing, so any module (the torch-free readers and the ONNX runtime included) can use it.
"""
from __future__ import annotations

# ImageNet per-channel statistics (RGB, pixel values scaled to [0, 1]): the standard input of
# every fcnseg model is ``(pixel / 255 - IMAGENET_MEAN) / IMAGENET_STD``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Label of pixels that count for nothing (PASCAL VOC's void / object borders, padding).
IGNORE_INDEX = 255

# Image files fcnseg reads (every suffix of the formats in fcnseg.data.image_files.IMAGE_FORMATS;
# JPEG first: VOC ids are looked up as <id>.jpg before anything else).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
# Label masks: lossless formats only (a JPEG mask would blur class indices).
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")

# PASCAL VOC's 21 classes: the default class names of a VOC-layout dataset (copy before changing).
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]

# The "format" entry of an fcnseg checkpoint (see fcnseg.checkpoint).
CHECKPOINT_FORMAT = "fcnseg-checkpoint"

# `--precision` values (predict, segment(), eval, bench); what auto picks: fcnseg.precision.
PRECISIONS = ("auto", "fp32", "bf16", "int8")
