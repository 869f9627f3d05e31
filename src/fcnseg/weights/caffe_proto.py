"""Caffe's file formats without Caffe: message classes for the part of ``caffe.proto`` we read.

``.caffemodel`` files are a binary protobuf ``NetParameter``; ``.prototxt`` files are the
same message in protobuf's text format. Instead of pycaffe or protoc-generated code, the
message descriptors are built here in Python (``descriptor_pb2.FileDescriptorProto``) for
exactly the fields fcnseg needs, with the field numbers, types, defaults and packing of BVLC
Caffe's ``src/caffe/proto/caffe.proto`` (master branch). The ``protobuf`` library parses the
files; fields not declared here are skipped (binary) or ignored (text), so files with other
layers or from Caffe forks that keep these numbers read too.

Both net formats are covered: the current ``layer`` (LayerParameter, field 100, string
types) and the old V1 ``layers`` (V1LayerParameter, field 2, enum types; e.g. the paper's
``VGG_ILSVRC_16_layers.caffemodel``), and both blob shapes (``shape.dim`` and the legacy
``num``/``channels``/``height``/``width``).

Nothing here executes code from a file: protobuf decoding only builds messages.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from fcnseg.errors import CheckpointError

_F = descriptor_pb2.FieldDescriptorProto
_SCALAR = {"string": _F.TYPE_STRING, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE,
           "int64": _F.TYPE_INT64, "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32,
           "bool": _F.TYPE_BOOL}
_LABEL = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED}

# message -> fields (label, type, name, number[, "packed" or default]), as in caffe.proto.
# A type starting with "." is a message; one starting with ":" an enum (full names).
_CONV = ".caffe.ConvolutionParameter"
_MESSAGES: dict[str, list[tuple]] = {
    "BlobShape": [("repeated", "int64", "dim", 1, "packed")],
    "BlobProto": [
        ("optional", ".caffe.BlobShape", "shape", 7),
        ("repeated", "float", "data", 5, "packed"),
        ("repeated", "float", "diff", 6, "packed"),
        ("repeated", "double", "double_data", 8, "packed"),
        ("repeated", "double", "double_diff", 9, "packed"),
        ("optional", "int32", "num", 1), ("optional", "int32", "channels", 2),
        ("optional", "int32", "height", 3), ("optional", "int32", "width", 4),
    ],
    "NetParameter": [
        ("optional", "string", "name", 1),
        ("repeated", "string", "input", 3),
        ("repeated", ".caffe.BlobShape", "input_shape", 8),
        ("repeated", "int32", "input_dim", 4),
        ("repeated", ".caffe.LayerParameter", "layer", 100),
        ("repeated", ".caffe.V1LayerParameter", "layers", 2),
    ],
    "LayerParameter": [
        ("optional", "string", "name", 1), ("optional", "string", "type", 2),
        ("repeated", "string", "bottom", 3), ("repeated", "string", "top", 4),
        ("repeated", ".caffe.BlobProto", "blobs", 7),
        ("optional", _CONV, "convolution_param", 106),
        ("optional", ".caffe.CropParameter", "crop_param", 144),
        ("optional", ".caffe.InnerProductParameter", "inner_product_param", 117),
        ("optional", ".caffe.InputParameter", "input_param", 143),
        ("optional", ".caffe.PoolingParameter", "pooling_param", 121),
        ("optional", ".caffe.ScaleParameter", "scale_param", 142),
    ],
    "V1LayerParameter": [
        ("repeated", "string", "bottom", 2), ("repeated", "string", "top", 3),
        ("optional", "string", "name", 4),
        ("optional", ":caffe.V1LayerParameter.LayerType", "type", 5),
        ("repeated", ".caffe.BlobProto", "blobs", 6),
        ("optional", _CONV, "convolution_param", 10),
        ("optional", ".caffe.InnerProductParameter", "inner_product_param", 17),
        ("optional", ".caffe.PoolingParameter", "pooling_param", 19),
    ],
    "ConvolutionParameter": [
        ("optional", "uint32", "num_output", 1), ("optional", "bool", "bias_term", 2, True),
        ("repeated", "uint32", "pad", 3), ("repeated", "uint32", "kernel_size", 4),
        ("repeated", "uint32", "stride", 6), ("repeated", "uint32", "dilation", 18),
        ("optional", "uint32", "pad_h", 9), ("optional", "uint32", "pad_w", 10),
        ("optional", "uint32", "kernel_h", 11), ("optional", "uint32", "kernel_w", 12),
        ("optional", "uint32", "stride_h", 13), ("optional", "uint32", "stride_w", 14),
        ("optional", "uint32", "group", 5, 1),
    ],
    "CropParameter": [("optional", "int32", "axis", 1, 2), ("repeated", "uint32", "offset", 2)],
    "InnerProductParameter": [
        ("optional", "uint32", "num_output", 1), ("optional", "bool", "bias_term", 2, True),
        ("optional", "int32", "axis", 5, 1), ("optional", "bool", "transpose", 6, False),
    ],
    "InputParameter": [("repeated", ".caffe.BlobShape", "shape", 1)],
    "PoolingParameter": [
        ("optional", ":caffe.PoolingParameter.PoolMethod", "pool", 1, "MAX"),
        ("optional", "uint32", "pad", 4, 0), ("optional", "uint32", "pad_h", 9, 0),
        ("optional", "uint32", "pad_w", 10, 0), ("optional", "uint32", "kernel_size", 2),
        ("optional", "uint32", "kernel_h", 5), ("optional", "uint32", "kernel_w", 6),
        ("optional", "uint32", "stride", 3, 1), ("optional", "uint32", "stride_h", 7),
        ("optional", "uint32", "stride_w", 8), ("optional", "bool", "global_pooling", 12, False),
    ],
    "ScaleParameter": [
        ("optional", "int32", "axis", 1, 1), ("optional", "int32", "num_axes", 2, 1),
        ("optional", "bool", "bias_term", 4, False),
    ],
}
# nested enums: (message, enum) -> values
_ENUMS: dict[tuple[str, str], dict[str, int]] = {
    ("PoolingParameter", "PoolMethod"): {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    ("V1LayerParameter", "LayerType"): {
        "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
        "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6,
        "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8,
        "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12,
        "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
        "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18,
        "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20,
        "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24,
        "THRESHOLD": 31,
    },
}
# V1 enum -> the layer type string of the current format (Caffe's UpgradeV1LayerType)
V1_TYPE_NAMES = {"CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
                 "INNER_PRODUCT": "InnerProduct", "POOLING": "Pooling", "RELU": "ReLU",
                 "DROPOUT": "Dropout", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss",
                 "ELTWISE": "Eltwise", "DATA": "Data", "LRN": "LRN", "CONCAT": "Concat",
                 "SPLIT": "Split", "ACCURACY": "Accuracy", "IMAGE_DATA": "ImageData"}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="fcnseg_caffe_subset.proto", package="caffe",
                                            syntax="proto2")
    for msg_name, fields in _MESSAGES.items():
        msg = fd.message_type.add(name=msg_name)
        for (owner, enum_name), values in _ENUMS.items():
            if owner == msg_name:
                enum = msg.enum_type.add(name=enum_name)
                for value_name, number in values.items():
                    enum.value.add(name=value_name, number=number)
        for label, type_, name, number, *extra in fields:
            field = msg.field.add(name=name, number=number, label=_LABEL[label])
            if type_[0] == ".":
                field.type, field.type_name = _F.TYPE_MESSAGE, type_
            elif type_[0] == ":":
                field.type, field.type_name = _F.TYPE_ENUM, "." + type_[1:]
            else:
                field.type = _SCALAR[type_]
            if extra and extra[0] == "packed":
                field.options.packed = True
            elif extra:
                field.default_value = str(extra[0]).lower() if isinstance(extra[0], bool) else str(extra[0])
    return fd


# A private pool: no clash with a caffe_pb2 (pycaffe) a user may have imported.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message_class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"caffe.{name}"))


NetParameter = _message_class("NetParameter")
LayerParameter = _message_class("LayerParameter")
V1LayerParameter = _message_class("V1LayerParameter")
BlobProto = _message_class("BlobProto")
BlobShape = _message_class("BlobShape")


def read_caffemodel(path: str | os.PathLike) -> NetParameter:
    """Parse a binary ``.caffemodel`` (NetParameter). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path to the .caffemodel")
    net = NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a Caffe .caffemodel (its bytes do not decode as a protobuf NetParameter: "
            f"{str(e)[:120]}); the file may be truncated or of another format: download it again") from None
    if not net.layer and not net.layers:
        raise CheckpointError(f"{path}: decodes as protobuf but holds no Caffe layers; it is not a "
                              f".caffemodel (or is empty/truncated): download it again")
    return net


def read_prototxt(path: str | os.PathLike) -> NetParameter:
    """Parse a text ``.prototxt`` net description (NetParameter; fields not declared here are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path to the .prototxt")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file; --prototxt takes the net's .prototxt "
                              f"(e.g. deploy.prototxt), --caffemodel the binary weights") from None
    net = NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise CheckpointError(f"{path}: not a Caffe net .prototxt ({e}); pass the net's deploy.prototxt") from None
    if not net.layer and not net.layers:
        raise CheckpointError(f"{path}: no layers found; it is not a Caffe net .prototxt")
    return net


def blob_shape(blob) -> tuple[int, ...]:
    """A blob's shape: ``shape.dim``, else the legacy 4-D ``num, channels, height, width``."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))


def blob_to_array(blob, where: str) -> np.ndarray:
    """A BlobProto's values as a float32 array of its shape. ``where`` names it in errors."""
    shape = blob_shape(blob)
    # np.array on protobuf's repeated field: a bulk copy, not one Python float per value
    values = np.array(blob.data if len(blob.data) or not len(blob.double_data) else blob.double_data,
                      dtype=np.float32)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise CheckpointError(f"{where}: blob has {values.size} values but its shape {shape} needs "
                              f"{int(np.prod(shape, dtype=np.int64))}; the file is truncated or corrupt: "
                              f"download it again")
    return values.reshape(shape)
