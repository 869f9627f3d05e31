"""FCN-32s, FCN-16s and FCN-8s heads over any backbone.

Layer names follow the reference Caffe nets (score_fr, score_pool4, score_pool3,
upscore2, upscore_pool4, upscore8 / upscore16 / upscore). Data flow for FCN-8s::

    fc7 (s32) --score_fr--> (B,N,h32,w32) --upscore2 (x2)--> (B,N,~h16,~w16) --+
    pool4 (s16) --score_pool4-----------------------------------crop-------> sum
         --upscore_pool4 (x2)--> (B,N,~h8,~w8) --+
    pool3 (s8) --score_pool3-------------crop--> sum --upscore8 (x8)--> crop --> (B,N,H,W)

Crop offsets are derived from the coordinate maps of the actual layers
(:mod:`fcnseg.models.geometry`), never typed in. In the ``caffe`` geometry this gives the
reference offsets (VGG16: 19; 5, 27; 5, 9, 31); the same rule serves the ``modern``
geometry and every backbone. A negative skip offset means the skip is zero-padded.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.models.backbones.base import Backbone
from fcnseg.models.geometry import (CoordMap, bilinear_kernel, offset_between, out_size, pad_to_min_size,
                                    record_offset, sizes_through)
from fcnseg.models.input_convention import STANDARD, ConvertInput
from fcnseg.models.score_conv import score_conv

# head variant -> strides of the score maps it fuses (coarse to fine)
HEAD_STRIDES = {"32s": (32,), "16s": (32, 16), "8s": (32, 16, 8)}
UPSAMPLING = ("paper", "learned", "fixed")
# "at once" training (fcn8s-atonce) scales the skip features so that the fused
# scores start balanced with fc7's.
AT_ONCE_SCALE = {16: 1e-2, 8: 1e-4}
_FINAL_NAME = {32: "upscore", 16: "upscore16", 8: "upscore8"}
_SKIP_NAME = {16: "score_pool4", 8: "score_pool3"}
_UP_NAME = {16: "upscore2", 8: "upscore_pool4"}  # the x2 upsampling feeding each fusion


class FCN(nn.Module):
    """Fully convolutional network: backbone features -> score maps -> fused -> upsampled logits.

    Args:
        backbone: a :class:`Backbone` (features at strides 8, 16, 32).
        num_classes: N, number of output channels (logits).
        variant: "32s", "16s" or "8s".
        geometry: "modern" or "caffe" (must match how the backbone was built).
        upsampling: "paper" (x2 layers learned, the final one fixed to bilinear, as in the
            paper), "learned" (all learned) or "fixed" (all fixed bilinear).
        at_once: scale pool4/pool3 by 1e-2/1e-4 before scoring (all-at-once training).
        input_convention: what the backbone's weights expect (:mod:`fcnseg.models.input_convention`);
            the model converts the standard input (RGB, ImageNet-normalised) itself.

    ``forward(x: (B,3,H,W)) -> logits (B,N,H,W)`` for any H, W >= 1; ``x`` is always the
    standard input, whatever the convention.
    """

    def __init__(self, backbone: Backbone, num_classes: int, variant: str = "8s",
                 geometry: str = "modern", upsampling: str = "paper", at_once: bool = False,
                 input_convention: str = STANDARD) -> None:
        super().__init__()
        # First op of forward, before any padding; holds no state-dict entries.
        self.prepare_input = ConvertInput(input_convention)
        if variant not in HEAD_STRIDES:
            raise ValueError(f"variant must be one of {list(HEAD_STRIDES)}, got {variant!r}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.variant = variant
        self.geometry = geometry
        self.at_once = at_once
        self.strides = HEAD_STRIDES[variant]
        names, chans = backbone.feature_names, backbone.feature_channels
        paths = backbone.coord_paths()
        maps = {s: CoordMap().through(paths[names[s]]) for s in (8, 16, 32)}

        # 1x1 score convs, zero-initialised (the paper): the net starts at zero logits, and a
        # skip added in staged training starts without changing the predictions.
        self.score_fr = _zero_conv(chans[32], num_classes)
        cur = maps[32]
        self.crop_offsets: dict[str, int] = {}
        self.misalignment: dict[str, float] = {}
        self._fuse_offsets: dict[int, int] = {}
        for s in self.strides[1:]:
            setattr(self, _SKIP_NAME[s], _zero_conv(chans[s], num_classes))
            up = self._upsample_layer(cur, maps[s], 2)
            setattr(self, _UP_NAME[s], up)
            cur = cur.then(up)
            # index in the skip's grid of the upsampled map's origin (< 0: the skip is padded)
            d = offset_between(maps[s], cur)
            self._fuse_offsets[s] = self._record(_SKIP_NAME[s], d)
        last = self.strides[-1]
        final = self._upsample_layer(cur, CoordMap(1.0, 0.0), last)
        setattr(self, _FINAL_NAME[last], final)
        out_map = cur.then(final)
        self._final_offset = self._record(_FINAL_NAME[last], -out_map.b)
        if self._final_offset < 0:
            raise ValueError(f"{backbone.arch}/{geometry}: output grid starts inside the image "
                             f"(offset {self._final_offset}); cannot crop")
        self._set_upsampling(upsampling)
        self._paths = paths
        self.min_input_size = _min_input_size(paths)
        # Bottom/right padding that makes the output grid cover the whole input. Zero for
        # VGG16/ResNets; AlexNet's 11x11/4 conv1 can leave the last few pixels uncovered.
        self.cover_pad = next(c for c in range(0, 257)
                              if all(self._extent(n + c) >= n + self._final_offset for n in range(1, 257)))
        del self._paths
        self._refresh_diagonal()
        # weights loaded later (checkpoints, staged init) may not be diagonal: re-check then
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_diagonal())

    def _upsample_layer(self, src: CoordMap, dst: CoordMap, factor: int) -> nn.ConvTranspose2d:
        """A bilinear-initialised x``factor`` transposed conv from grid ``src`` towards ``dst``.

        Unpadded, as in the reference nets: its output is the whole support of the bilinear
        interpolant, ramps at both borders included, so x2 then x16 equals x32 exactly (staged
        training starts where the coarser net ended). Kernel 2f (Caffe's) or 2f-1 (for grids
        like ResNet's whose samples sit on pixel corners), whichever makes the offset to
        ``dst`` an integer.
        """
        a_out = src.a / factor
        kernel = 2 * factor
        for k in (2 * factor, 2 * factor - 1):
            if _is_int((src.b - a_out * (k - 1) / 2 - dst.b) / a_out):
                kernel = k
                break
        layer = nn.ConvTranspose2d(self.num_classes, self.num_classes, kernel, factor, bias=False)
        with torch.no_grad():
            layer.weight.copy_(bilinear_kernel(self.num_classes, kernel))
        return layer

    def _record(self, name: str, offset: float) -> int:
        return record_offset(self.crop_offsets, self.misalignment, name, offset)

    def _set_upsampling(self, mode: str) -> None:
        self.upsampling = mode
        final = _FINAL_NAME[self.strides[-1]]
        for s in self.strides[1:]:
            getattr(self, _UP_NAME[s]).weight.requires_grad_(mode != "fixed")
        getattr(self, final).weight.requires_grad_(mode == "learned")

    def _extent(self, n: int) -> int:
        """Output size (per axis) before the final crop, for input size ``n`` (mirrors forward)."""
        n = max(n, self.min_input_size)
        names = self.backbone.feature_names
        h = {s: sizes_through(self._paths[names[s]], n) for s in (8, 16, 32)}
        cur = h[32]
        for s in self.strides[1:]:
            up = out_size(getattr(self, _UP_NAME[s]), cur)
            cur = up
        return out_size(getattr(self, _FINAL_NAME[self.strides[-1]]), cur)

    def _refresh_diagonal(self) -> None:
        """Cache per-class kernels (C, 1, k, k) of the upsampling layers that are diagonal.

        Kept as non-persistent buffers: they follow ``.to()``, stay out of state dicts, export
        to ONNX as constants, and are recomputed whenever a state dict is loaded and whenever
        :meth:`_upsample` finds the weight changed since (``_diagonal_keys``: its storage and
        version counter, which every in-place write such as ``weight.copy_(w)`` bumps).
        """
        self._diagonal = set()
        self._diagonal_keys = {}
        # Normal tensors even when called from a forward under inference_mode (evaluation):
        # a later training step saves this kernel for backward, which inference tensors refuse.
        with torch.inference_mode(False), torch.no_grad():
            for name in (*(_UP_NAME[s] for s in self.strides[1:]), _FINAL_NAME[self.strides[-1]]):
                self._diagonal_keys[name] = _tensor_key(getattr(self, name).weight)
                w = getattr(self, name).weight.detach()
                diag = torch.diagonal(w, dim1=0, dim2=1).permute(2, 0, 1).unsqueeze(1)  # (C, 1, k, k)
                if w.device.type != "meta":
                    off = w.clone()
                    off[torch.arange(w.shape[0]), torch.arange(w.shape[0])] = 0  # exact, unlike comparing sums
                    if bool(off.any()):
                        continue  # a learned or loaded kernel that mixes classes: keep it dense
                self.register_buffer(f"_{name}_per_class", diag.clone(), persistent=False)
                self._diagonal.add(name)

    def _upsample(self, name: str, x: Tensor) -> Tensor:
        """Apply upsampling layer ``name``; a fixed per-class one runs as a grouped conv.

        A bilinear layer maps class i to class i only, so the dense (C, C, k, k) transposed
        conv does C times the necessary work; for the final x8 of FCN-8s on a small backbone
        that is a large share of the whole forward pass. Learned layers stay dense.
        """
        layer = getattr(self, name)
        if layer.weight.requires_grad:
            return layer(x)
        if not _tracing():  # graphs being traced/exported see constant weights
            key = _tensor_key(layer.weight)
            if key is None or key != self._diagonal_keys.get(name):  # edited since: re-derive
                self._refresh_diagonal()
        if name not in self._diagonal:
            return layer(x)
        return F.conv_transpose2d(x, getattr(self, f"_{name}_per_class"), stride=layer.stride,
                                  padding=layer.padding, output_padding=layer.output_padding,
                                  groups=layer.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        x = self.prepare_input(x)  # (B, 3, H, W) in the backbone's own input convention
        H, W = x.shape[-2:]
        x = pad_to_min_size(x, self.min_input_size, self.cover_pad)  # bottom/right only
        feats = self.backbone(x)
        names = self.backbone.feature_names
        # score convs as GEMMs on CPU: oneDNN's AMX bf16 conv backward corrupts the heap (score_conv.py)
        score = score_conv(self.score_fr, feats[names[32]])  # (B, N, h32, w32)
        for s in self.strides[1:]:
            up = self._upsample(_UP_NAME[s], score)  # (B, N, ~2*h, ~2*w)
            f = feats[names[s]]
            if self.at_once:
                f = f * AT_ONCE_SCALE[s]
            skip = score_conv(getattr(self, _SKIP_NAME[s]), f)  # (B, N, h_s, w_s)
            score = _fuse(up, skip, self._fuse_offsets[s])
        out = self._upsample(_FINAL_NAME[self.strides[-1]], score)  # (B, N, >=H+o, >=W+o)
        o = self._final_offset
        if out.shape[-2] < o + H or out.shape[-1] < o + W:  # a geometry bug, never user error
            raise RuntimeError(f"internal: output {tuple(out.shape[-2:])} too small for crop "
                               f"offset {o} and input {(H, W)}")
        return out[..., o:o + H, o:o + W]


def _fuse(up: Tensor, skip: Tensor, d: int) -> Tensor:
    """Add the skip's scores to the upsampled ones; ``d`` = index in ``skip`` of ``up``'s origin.

    The result keeps ``up``'s extent (the whole bilinear support): the skip is cropped to it
    (the reference nets: ``score_pool4c``) or zero-padded where it is smaller.
    """
    h, w = up.shape[-2:]
    # F.pad with negative amounts crops: one call fits the skip onto up's grid either way.
    skip = F.pad(skip, (-d, w - skip.shape[-1] + d, -d, h - skip.shape[-2] + d))
    return up + skip


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _is_int(v: float) -> bool:
    return math.isclose(v, round(v), abs_tol=1e-9)


def _min_input_size(paths: dict[str, list[nn.Module]], limit: int = 4096) -> int:
    """Smallest input size for which every feature map is at least 1x1."""
    for n in range(1, limit):
        if all(sizes_through(p, n) >= 1 for p in paths.values()):
            return n
    raise ValueError("backbone needs inputs larger than 4096 pixels")


def _tensor_key(t: Tensor) -> tuple | None:
    """What identifies a weight's current values: storage, version counter, dtype, device.

    None for a tensor without a version counter (an inference tensor): then never cached.
    """
    try:
        return (t.data_ptr(), t._version, t.dtype, t.device)
    except RuntimeError:  # inference tensors do not track versions
        return None


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
