"""The paper's reference Caffe nets, written as Caffe would have them, for the importer's tests.

- :func:`fcn_deploy_prototxt`: the published deploy nets of ``fcn32s/16s/8s-heavy-pascal`` and
  ``fcn8s-atonce-pascal`` (shelhamer/fcn.berkeleyvision.org ``voc-fcn*/net.py``, and its one
  checked-in ``voc-fcn8s/deploy.prototxt`` whose layout the others follow): an ``Input`` layer,
  conv1_1 ``pad: 100``, ``fc6`` a 7x7 Convolution with ``pad: 0``, Deconvolution layers with
  ``num_output: 21, bias_term: false`` and no ``group``, Crop layers ``axis: 2`` with offsets
  19 (32s), 5 / 27 (16s), 5 / 9 / 31 (8s), and, at once, Scale layers of 0.01 / 0.0001 on
  pool4 / pool3 before their score layers. The text is written here by hand, independently of
  fcnseg; only the fc6/fc7 width can shrink (``fc_width``) to keep random weights small.
- :func:`vgg16_v1_prototxt`: the VGG_ILSVRC_16_layers deploy net in Caffe's old V1 format
  (``layers { type: CONVOLUTION ... }``, fc6/fc7/fc8 InnerProduct).
- :func:`write_caffemodel`: a binary NetParameter (the prototxt's layers plus blobs), built
  with fcnseg's protobuf classes. The oracle, OpenCV's own Caffe reader, then reads it with
  its own copy of caffe.proto: a wrong field number or layout fails the comparison.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67891)
VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
CROPS = {"32s": {"score": 19}, "16s": {"score_pool4c": 5, "score": 27},
         "8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31}}


def _conv(name: str, bottom: str, num_output: int, kernel: int, pad: int, *, top: str | None = None) -> str:
    return f"""layer {{
  name: "{name}"
  type: "Convolution"
  bottom: "{bottom}"
  top: "{top or name}"
  param {{
    lr_mult: 1
    decay_mult: 1
  }}
  param {{
    lr_mult: 2
    decay_mult: 0
  }}
  convolution_param {{
    num_output: {num_output}
    pad: {pad}
    kernel_size: {kernel}
    stride: 1
  }}
}}
"""


def _relu(name: str, blob: str) -> str:
    return f'layer {{\n  name: "{name}"\n  type: "ReLU"\n  bottom: "{blob}"\n  top: "{blob}"\n}}\n'


def _pool(name: str, bottom: str) -> str:
    return (f'layer {{\n  name: "{name}"\n  type: "Pooling"\n  bottom: "{bottom}"\n  top: "{name}"\n'
            f"  pooling_param {{\n    pool: MAX\n    kernel_size: 2\n    stride: 2\n  }}\n}}\n")


def _deconv(name: str, bottom: str, num_output: int, kernel: int, stride: int, group: int = 1) -> str:
    g = f"    group: {group}\n" if group != 1 else ""
    return (f'layer {{\n  name: "{name}"\n  type: "Deconvolution"\n  bottom: "{bottom}"\n  top: "{name}"\n'
            f"  param {{\n    lr_mult: 0\n  }}\n  convolution_param {{\n    num_output: {num_output}\n"
            f"    bias_term: false\n    kernel_size: {kernel}\n    stride: {stride}\n{g}  }}\n}}\n")


def _crop(name: str, bottom: str, reference: str, offset: int) -> str:
    return (f'layer {{\n  name: "{name}"\n  type: "Crop"\n  bottom: "{bottom}"\n  bottom: "{reference}"\n'
            f'  top: "{name}"\n  crop_param {{\n    axis: 2\n    offset: {offset}\n  }}\n}}\n')


def _sum(name: str, a: str, b: str) -> str:
    return (f'layer {{\n  name: "{name}"\n  type: "Eltwise"\n  bottom: "{a}"\n  bottom: "{b}"\n  top: "{name}"\n'
            f"  eltwise_param {{\n    operation: SUM\n  }}\n}}\n")


def _scale(name: str, bottom: str, value: float) -> str:
    return (f'layer {{\n  name: "{name}"\n  type: "Scale"\n  bottom: "{bottom}"\n  top: "{name}"\n'
            f"  param {{\n    lr_mult: 0\n  }}\n  scale_param {{\n    filler {{\n      type: \"constant\"\n"
            f"      value: {value}\n    }}\n  }}\n}}\n")


def fcn_deploy_prototxt(variant: str, *, at_once: bool = False, num_classes: int = 21, fc_width: int = 4096,
                        deconv_group: dict[str, int] | None = None) -> str:
    """The deploy prototxt of the reference FCN-``variant`` ("32s", "16s", "8s") on VGG16."""
    groups = deconv_group or {}
    n = num_classes
    parts = ['name: "FCN"\nlayer {\n  name: "input"\n  type: "Input"\n  top: "data"\n'
             "  input_param {\n    shape {\n      dim: 1\n      dim: 3\n      dim: 500\n      dim: 500\n"
             "    }\n  }\n}\n"]
    bottom = "data"
    for b, (width, reps) in enumerate(VGG_BLOCKS, 1):
        for i in range(1, reps + 1):
            name = f"conv{b}_{i}"
            parts += [_conv(name, bottom, width, 3, 100 if name == "conv1_1" else 1), _relu(f"relu{b}_{i}", name)]
            bottom = name
        parts.append(_pool(f"pool{b}", bottom))
        bottom = f"pool{b}"
    parts += [_conv("fc6", "pool5", fc_width, 7, 0), _relu("relu6", "fc6"),
              _conv("fc7", "fc6", fc_width, 1, 0), _relu("relu7", "fc7"), _conv("score_fr", "fc7", n, 1, 0)]
    crops = CROPS[variant]
    if variant == "32s":
        parts += [_deconv("upscore", "score_fr", n, 64, 32, groups.get("upscore", 1)),
                  _crop("score", "upscore", "data", crops["score"])]
        return "".join(parts)
    parts.append(_deconv("upscore2", "score_fr", n, 4, 2, groups.get("upscore2", 1)))
    pool4 = "pool4"
    if at_once:
        parts.append(_scale("scale_pool4", "pool4", 0.01))
        pool4 = "scale_pool4"
    parts += [_conv("score_pool4", pool4, n, 1, 0),
              _crop("score_pool4c", "score_pool4", "upscore2", crops["score_pool4c"]),
              _sum("fuse_pool4", "upscore2", "score_pool4c")]
    if variant == "16s":
        parts += [_deconv("upscore16", "fuse_pool4", n, 32, 16, groups.get("upscore16", 1)),
                  _crop("score", "upscore16", "data", crops["score"])]
        return "".join(parts)
    parts.append(_deconv("upscore_pool4", "fuse_pool4", n, 4, 2, groups.get("upscore_pool4", 1)))
    pool3 = "pool3"
    if at_once:
        parts.append(_scale("scale_pool3", "pool3", 0.0001))
        pool3 = "scale_pool3"
    parts += [_conv("score_pool3", pool3, n, 1, 0),
              _crop("score_pool3c", "score_pool3", "upscore_pool4", crops["score_pool3c"]),
              _sum("fuse_pool3", "upscore_pool4", "score_pool3c"),
              _deconv("upscore8", "fuse_pool3", n, 16, 8, groups.get("upscore8", 1)),
              _crop("score", "upscore8", "data", crops["score"])]
    return "".join(parts)


def vgg16_v1_prototxt(fc_width: int = 4096, num_outputs: int = 1000) -> str:
    """VGG_ILSVRC_16_layers' deploy net in the V1 format (as published in 2014)."""
    parts = ['name: "VGG_ILSVRC_16_layers"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\n'
             "input_dim: 224\ninput_dim: 224\n"]

    def layer(body: str) -> None:
        parts.append("layers {\n" + body + "}\n")

    bottom = "data"
    for b, (width, reps) in enumerate(VGG_BLOCKS, 1):
        for i in range(1, reps + 1):
            name = f"conv{b}_{i}"
            layer(f'  bottom: "{bottom}"\n  top: "{name}"\n  name: "{name}"\n  type: CONVOLUTION\n'
                  f"  convolution_param {{\n    num_output: {width}\n    pad: 1\n    kernel_size: 3\n  }}\n")
            layer(f'  bottom: "{name}"\n  top: "{name}"\n  name: "relu{b}_{i}"\n  type: RELU\n')
            bottom = name
        layer(f'  bottom: "{bottom}"\n  top: "pool{b}"\n  name: "pool{b}"\n  type: POOLING\n'
              f"  pooling_param {{\n    pool: MAX\n    kernel_size: 2\n    stride: 2\n  }}\n")
        bottom = f"pool{b}"
    for name, src, out in (("fc6", "pool5", fc_width), ("fc7", "fc6", fc_width), ("fc8", "fc7", num_outputs)):
        layer(f'  bottom: "{src}"\n  top: "{name}"\n  name: "{name}"\n  type: INNER_PRODUCT\n'
              f"  inner_product_param {{\n    num_output: {out}\n  }}\n")
        if name != "fc8":
            k = name[-1]
            layer(f'  bottom: "{name}"\n  top: "{name}"\n  name: "relu{k}"\n  type: RELU\n')
            layer(f'  bottom: "{name}"\n  top: "{name}"\n  name: "drop{k}"\n  type: DROPOUT\n'
                  f"  dropout_param {{\n    dropout_ratio: 0.5\n  }}\n")
    layer('  bottom: "fc8"\n  top: "prob"\n  name: "prob"\n  type: SOFTMAX\n')
    return "".join(parts)


# ----------------------------------------------------------------------------- weights

def _he(rng: np.random.Generator, shape: tuple[int, ...], gain: float = 2.0) -> np.ndarray:
    """Random weights whose activations keep their scale through ReLU layers (He et al.)."""
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(gain / fan_in)))


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32)


def bilinear(channels: int, k: int) -> np.ndarray:
    """The reference nets' upsampling weights (surgery.interp / upsample_filt), (C, C, k, k)."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    w = np.zeros((channels, channels, k, k), dtype=np.float32)
    w[range(channels), range(channels)] = filt
    return w


def vgg16_conv_weights(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    out, cin = {}, 3
    for b, (width, reps) in enumerate(VGG_BLOCKS, 1):
        for i in range(1, reps + 1):
            out[f"conv{b}_{i}"] = [_he(rng, (width, cin, 3, 3)), _bias(rng, width)]
            cin = width
    return out


def fcn_weights(variant: str, rng: np.random.Generator, *, at_once: bool = False, num_classes: int = 21,
                fc_width: int = 4096, random_deconv: tuple[str, ...] = (), per_channel_scale: bool = False,
                deconv_group: dict[str, int] | None = None,
                convs: dict[str, list[np.ndarray]] | None = None) -> dict[str, list[np.ndarray]]:
    """Random weights for :func:`fcn_deploy_prototxt` in Caffe's layouts.

    Deconvolutions are bilinear (as published) unless named in ``random_deconv``; a layer in
    ``deconv_group`` with group C has Caffe's (C, 1, k, k) per-class weights. The skip score
    layers are scaled up by 1/scale at once, so that pool4/pool3 weigh in the logits (a
    wrong skip path would otherwise hide below the comparison's tolerance).
    """
    n, groups = num_classes, deconv_group or {}
    w = dict(convs) if convs is not None else vgg16_conv_weights(rng)
    w["fc6"] = [_he(rng, (fc_width, 512, 7, 7)), _bias(rng, fc_width)]
    w["fc7"] = [_he(rng, (fc_width, fc_width, 1, 1)), _bias(rng, fc_width)]
    w["score_fr"] = [_he(rng, (n, fc_width, 1, 1), 1.0), _bias(rng, n)]
    ups = {"32s": {"upscore": 64}, "16s": {"upscore2": 4, "upscore16": 32},
           "8s": {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16}}[variant]
    for name, k in ups.items():
        g = groups.get(name, 1)  # 1, or n: per-class kernels (C, 1, k, k)
        if name in random_deconv:
            w[name] = [_he(rng, (n, n // g, k, k), 1.0)]
        else:
            w[name] = [bilinear(n, k) if g == 1 else np.repeat(bilinear(1, k), n, axis=0)]
    for skip, cin, scale_name, scale in (("score_pool4", 512, "scale_pool4", 0.01), ("score_pool3", 256, "scale_pool3", 1e-4)):
        if (skip == "score_pool4" and variant == "32s") or (skip == "score_pool3" and variant != "8s"):
            continue
        up = 1.0 / scale if at_once else 1.0
        w[skip] = [_he(rng, (n, cin, 1, 1), 1.0) * np.float32(up), _bias(rng, n)]
        if at_once:
            s = np.full(cin, scale, np.float32)
            if per_channel_scale:
                s = s * rng.uniform(0.5, 1.5, cin).astype(np.float32)
            w[scale_name] = [s]
    return w


def vgg16_classifier_weights(rng: np.random.Generator, fc_width: int, num_outputs: int) -> dict[str, list[np.ndarray]]:
    """Random VGG16 classifier weights in the 2014 file's layout: fc layers InnerProduct (out, in)."""
    w = vgg16_conv_weights(rng)
    w["fc6"] = [_he(rng, (fc_width, 25088)), _bias(rng, fc_width)]
    w["fc7"] = [_he(rng, (fc_width, fc_width)), _bias(rng, fc_width)]
    w["fc8"] = [_he(rng, (num_outputs, fc_width), 1.0), _bias(rng, num_outputs)]
    return w


def _blob(array: np.ndarray, legacy: bool):
    from fcnseg.weights.caffe_proto import BlobProto

    blob = BlobProto()
    a = np.ascontiguousarray(array, dtype=np.float32)
    if legacy:  # the 2014 files: 4-D num/channels/height/width, leading 1s (biases (1, 1, 1, C))
        dims = (1,) * (4 - a.ndim) + a.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(a.shape)
    # BlobProto.data is `repeated float data = 5 [packed = true]`: on the wire one field, tag
    # (5 << 3) | 2, a varint byte length, then little-endian float32s. Merged as such: ~50x
    # faster than blob.data.extend() (one Python float per value); the importer parses it as
    # its declared float field, and OpenCV as caffe.proto's.
    raw = a.astype("<f4").tobytes()
    blob.MergeFromString(bytes([(5 << 3) | 2]) + _varint(len(raw)) + raw)
    assert len(blob.data) == a.size
    return blob


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_caffemodel(prototxt: Path, out: Path, weights: dict[str, list[np.ndarray]], *,
                     legacy_shapes: bool = False) -> Path:
    """The prototxt's net with ``weights`` attached by layer name, as a binary .caffemodel.

    Like a Caffe snapshot, it holds each layer's parameters too (so the importer can check the
    geometry without the prototxt). Layers named in ``weights`` but not in the prototxt are
    added with blobs only (to make mismatching files).
    """
    from fcnseg.weights.caffe_proto import read_prototxt

    net = read_prototxt(prototxt)
    layers = list(net.layer) or list(net.layers)
    seen = set()
    for layer in layers:
        if layer.name in weights:
            layer.blobs.extend(_blob(a, legacy_shapes) for a in weights[layer.name])
            seen.add(layer.name)
    for name in weights.keys() - seen:
        extra = net.layer.add() if net.layer else net.layers.add()
        extra.name = name
        extra.blobs.extend(_blob(a, legacy_shapes) for a in weights[name])
    out.write_bytes(net.SerializeToString())
    return out


# ----------------------------------------------------------------------------- the oracle

def opencv_forward(prototxt: Path, caffemodel: Path, rgb: np.ndarray, output: str | None = None,
                   fusion: bool = True) -> np.ndarray:
    """Run the Caffe net with OpenCV's own Caffe importer on an RGB uint8 image.

    The image goes in as Caffe wants it: BGR, 0-255, minus the mean pixel (blobFromImage).
    """
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(fusion)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    blob = cv2.dnn.blobFromImage(bgr, 1.0, (rgb.shape[1], rgb.shape[0]), CAFFE_MEAN_BGR, swapRB=False, crop=False)
    net.setInput(blob)
    return net.forward(output) if output else net.forward()
