"""A faster CPU inference path for FCNs: prepacked oneDNN convolutions and GEMM classifiers.

Why eager PyTorch leaves speed on the table (FCN-8s-VGG16, 360x480, 2 threads; see
``benchmarks/README.md`` for the profile):

1. Every eager ``Conv2d`` call hands oneDNN a plain ``(O, I, kh, kw)`` weight, which oneDNN
   reorders into its blocked layout *on every call*. For fc6 (4096x512x7x7, 411 MB) that
   copy alone takes ~20% of the forward pass; fc7 (64 MB) another ~2%.
2. oneDNN's direct 7x7 convolution on the tiny stride-32 map (12x15 pixels for 360x480)
   runs well below GEMM speed, while the same product as ``unfold`` + one matrix multiply
   (MKL sgemm, K = 512*49) runs near the machine's matmul peak.
3. NCHW activations are reordered to oneDNN's blocked layout and back around every conv,
   and NCHW max pooling is slow; channels-last (NHWC) activations avoid both.

:func:`optimize_for_cpu_inference` returns an inference-only copy of a model with those
three things fixed: convolutions with >= ``gemm_min_channels`` channels run as GEMMs on
the original weights (no copy), the others call oneDNN with weights reordered once, ahead
of time (a ReLU that directly follows a conv inside an ``nn.Sequential`` is fused into
it), and activations are channels-last. Numerics: fp32 results match eager to ~1e-6
relative (different summation order). It uses ``torch.ops.mkldnn._convolution_pointwise``
and ``torch._C._nn.mkldnn_reorder_conv2d_weight``, the private ops that
``torch.compile(freezing=True)`` emits for the same purpose; :func:`fastpath_unavailable`
says why the path cannot be used (no oneDNN, ops missing), so callers can fall back.
"""
from __future__ import annotations

import copy
import itertools
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.models.backbones.base import gemm_conv2d

# Unfolded GEMM input above this many bytes is computed in bands of output rows, so the
# GEMM path never needs much more memory than the conv it replaces (e.g. 2048x2048 input:
# fc6's unfolded input would be 411 MB at once).
GEMM_BAND_BYTES = 64 * 2**20


def weights_key(model: nn.Module) -> tuple | None:
    """What identifies ``model``'s current weights: (storage, version, dtype, device) per state-dict tensor.

    ``tensor._version`` grows with every in-place write (``copy_``, optimizer steps,
    ``load_state_dict``), so any edit changes the key; comparing it costs microseconds, not a
    pass over the values. None when a tensor has no version counter (an inference tensor):
    then nothing built from it can be cached.
    """
    key = []
    # state_dict: parameters and persistent buffers; non-persistent buffers are caches derived
    # from them (FCN's per-class kernels), refreshed by the model itself.
    for t in model.state_dict(keep_vars=True).values():
        try:
            key.append((t.data_ptr(), t._version, t.dtype, t.device))
        except RuntimeError:  # inference tensors do not track versions
            return None
    return tuple(key)


def fastpath_unavailable() -> str | None:
    """Why :func:`optimize_for_cpu_inference` cannot run here, or None if it can."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if not hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"):
        return "torch._C._nn.mkldnn_reorder_conv2d_weight is missing in this PyTorch"
    try:
        torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return "torch.ops.mkldnn._convolution_pointwise is missing in this PyTorch"
    return None


class PackedConv2d(nn.Module):
    """A ``Conv2d`` (optionally + ReLU) whose weight was reordered for oneDNN once, at build time.

    Inference only: the packed weight is a detached copy in oneDNN's opaque layout.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, input_shape: list[int], dtype: torch.dtype) -> None:
        super().__init__()
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.attr = "relu" if relu else "none"
        w = conv.weight.detach().to(dtype)
        # The input shape only steers oneDNN's choice of blocked layout; other sizes still work.
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, input_shape)
        self.bias = conv.bias.detach().to(dtype) if conv.bias is not None else None
        self.extra = f"{conv.in_channels}, {conv.out_channels}, kernel={tuple(conv.kernel_size)}, relu={relu}"

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self.attr, [], "")

    def extra_repr(self) -> str:
        return self.extra


class GemmConv2d(nn.Module):
    """A stride-1 ``Conv2d`` computed as ``unfold`` + GEMM (:func:`~fcnseg.models.backbones.base.gemm_conv2d`,
    the same code as the backbones' fc6/fc7), in bands of output rows for large inputs.

    For the classifier-turned-conv layers (fc6: 512->4096 7x7, fc7: 4096->4096 1x1) on the
    small stride-32 map, MKL's GEMM beats oneDNN's direct convolution and needs no weight
    reorder. The weight is a view of the original (fp32) or one cast copy (bf16).
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel = tuple(conv.kernel_size)
        self.padding = tuple(conv.padding)
        self.weight = conv.weight.detach().to(dtype).reshape(conv.out_channels, -1)  # (O, I*kh*kw)
        self.bias = conv.bias.detach().to(dtype) if conv.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (ph, pw) = self.kernel, self.padding
        nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if (kh, kw) == (1, 1) and (ph, pw) == (0, 0) and nhwc:
            # 1x1 conv on NHWC data is a linear layer on its last dim: (B,H,W,C) @ (C,O)^T.
            return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)
        # GEMM_BAND_BYTES is read at each call (tests lower it to force several bands).
        return gemm_conv2d(x, self.weight, self.bias, self.kernel, self.padding, band_bytes=GEMM_BAND_BYTES)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.out_channels}, kernel={self.kernel}, padding={self.padding}"


class CPUInferenceModel(nn.Module):
    """Wrapper that feeds the optimised copy channels-last input of the right dtype.

    Output: logits ``(B, C, H, W)`` in ``dtype`` (channels-last strides; values as eager).
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype, channels_last: bool,
                 source: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.channels_last = channels_last
        for attr in ("num_classes", "fcn_config", "class_names", "palette"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))
        # The weights this copy was built from: packed copies do not follow later edits of
        # the source, so a changed source makes forward refuse rather than answer stale.
        self._source = weakref.ref(source) if source is not None else None
        self.source_key = weights_key(source) if source is not None else None

    def is_stale(self) -> bool:
        """True if the source model's weights changed (in place or reloaded) since this copy was built."""
        src = self._source() if self._source is not None else None
        return src is not None and self.source_key is not None and weights_key(src) != self.source_key

    def forward(self, x: Tensor) -> Tensor:
        if self.is_stale():
            raise RuntimeError("the model's weights changed after optimize_for_cpu_inference built this "
                               "copy; build it again (fcnseg.segment / TorchRunner do so by themselves)")
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)


@torch.no_grad()
def optimize_for_cpu_inference(model: nn.Module, example_size: tuple[int, int] = (360, 480), *,
                               dtype: torch.dtype = torch.float32, channels_last: bool = True,
                               gemm_min_channels: int = 1024) -> CPUInferenceModel:
    """An inference-only copy of ``model`` for CPU: prepacked/fused convs, GEMM classifiers.

    ``example_size`` (H, W) is run once to learn each conv's input shape (a layout hint for
    oneDNN; any size works afterwards). ``dtype`` float32 or bfloat16. Convs with >=
    ``gemm_min_channels`` input or output channels (stride 1, no dilation, no groups) run
    as GEMMs. The original model is left untouched; unchanged modules share its tensors.
    Raises RuntimeError if :func:`fastpath_unavailable` says so.
    """
    reason = fastpath_unavailable()
    if reason:
        raise RuntimeError(f"CPU fast path unavailable: {reason}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    model.eval()
    # Copy the module tree but share every tensor with the original: no weight is
    # duplicated unless a replacement makes its own (packed or cast) copy.
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    inner = copy.deepcopy(model, memo)
    mem = torch.channels_last if channels_last else torch.contiguous_format
    shapes: dict[str, list[int]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:  # None: leaves the input unchanged
            shapes.setdefault(name, list(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in inner.named_modules()
             if type(m) is nn.Conv2d]
    try:
        inner(torch.zeros(1, 3, *example_size).contiguous(memory_format=mem))
    finally:
        for h in hooks:
            h.remove()
    if dtype != torch.float32:  # the modules we do not replace (BN, transposed convs) follow
        _cast_remaining(inner, dtype)
    names = {id(m): n for n, m in inner.named_modules()}
    for parent in list(inner.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            full = names[id(child)]
            if type(child) is not nn.Conv2d or full not in shapes:
                continue  # not a plain conv, or never run by forward (unused)
            # Fuse a ReLU only where execution order is certain: the next item of a Sequential.
            # (A forward that slices the Sequential between the two would see the fused,
            # post-ReLU output; no registered backbone does, and the tests check them all.)
            fuse = (isinstance(parent, nn.Sequential) and i + 1 < len(children)
                    and type(children[i + 1][1]) is nn.ReLU)
            if _gemm_eligible(child, gemm_min_channels):
                setattr(parent, name, GemmConv2d(child, dtype))
                continue
            if child.padding_mode != "zeros" or isinstance(child.padding, str):
                continue  # oneDNN's packed op takes explicit zero padding only
            setattr(parent, name, PackedConv2d(child, fuse, shapes[full], dtype))
            if fuse:
                setattr(parent, children[i + 1][0], nn.Identity())
    return CPUInferenceModel(inner, dtype, channels_last, source=model).eval()


def _gemm_eligible(conv: nn.Conv2d, min_channels: int) -> bool:
    return (max(conv.in_channels, conv.out_channels) >= min_channels and conv.groups == 1
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _cast_remaining(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating tensors of the copy to ``dtype`` without touching the original's tensors."""
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if p.is_floating_point():
                setattr(m, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                m.register_buffer(name, b.to(dtype))

