"""What one request of ``fcnseg serve`` does, without Gradio (testable on its own).

Models are loaded once per process, and each gets ONE runner (:class:`fcnseg.infer.torch_runner.TorchRunner`
or :class:`fcnseg.infer.onnx_runner.OnnxModel`, from :func:`fcnseg.predict.load_runner`), prepared
at start-up (the CPU fast path is built then) and reused by every request. A request reads the
upload (:func:`read_upload`: size limit checked from the header before any pixel is decoded),
segments it with :func:`fcnseg.infer.segment.segment_array` and ``tile="auto"`` (the code path of
``fcnseg predict`` and :func:`fcnseg.segment`; big images go through tiled inference in bounded
memory), and writes the palette PNG and the overlay with the writers ``fcnseg predict`` uses.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from fcnseg.constants import IGNORE_INDEX
from fcnseg.data import image_files
from fcnseg.data.synthetic import MAX_CLASSES, SHAPES, make_sample
from fcnseg.errors import ConfigError, DataError
from fcnseg.infer import visualize
from fcnseg.infer.crf import require_pydensecrf
from fcnseg.infer.segment import resolve_tiling, segment_array
from fcnseg.labels import class_names_or_default
from fcnseg.outputs import atomic_save_image
from fcnseg.predict import load_runner, safe_name

# Largest upload segmented, in pixels (50 MP: a full-frame camera photo). Tiled inference keeps
# the model's memory bounded; the image, labels and overlay still take ~7 bytes a pixel
# (350 MB at 50 MP), plus the tiles' band buffer (~0.1 GB per 1000 px of width at 21 classes).
DEFAULT_MAX_PIXELS = 50_000_000
TILE = "auto"  # whole image up to fcnseg.infer.segment.AUTO_TILE_PIXELS, tiles beyond
PREVIEW_MAX_SIDE = 2048  # the page shows the overlay at most this large; downloads are full size
N_EXAMPLES = 3


@dataclass
class ServedModel:
    """A model as the page offers it: its picker name, its prepared runner, classes and colours."""

    name: str                   # unique name in the model picker
    runner: Any                 # TorchRunner or OnnxModel, shared by all requests
    class_names: list[str]      # one per class
    palette: list[tuple[int, int, int]]  # 256 colours: the checkpoint's, then VOC's
    source: Path
    description: str            # architecture and runtime, e.g. "fcn8s_small (modern), PyTorch on cpu"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Segmentation:
    """One segmented image."""

    labels: np.ndarray          # uint8 (H, W) class indices
    seconds: float              # time spent in segment_array (model, tiling, CRF)
    tiling: tuple[int, int] | None  # (tile, overlap) if tiled, None for whole-image
    crf: bool


def display_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique names for the picker: the file name, with parent folders added until unique."""
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise ConfigError(f"model {p} is given twice (also as {seen[key]}); give each model once")
        seen[key] = p
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def load_models(paths: Sequence[str | Path], device: str = "cpu") -> list[ServedModel]:
    """Load every model once and prepare its runner (a first call builds the CPU fast path)."""
    models = []
    for path, name in zip(paths, display_names(paths)):
        path = Path(path)
        runner = load_runner(str(path), None, device)
        n = int(runner.num_classes)
        cfg = (getattr(getattr(runner, "model", None), "fcn_config", None)
               or getattr(runner, "config", None) or {})
        arch = cfg.get("name", "unknown architecture")
        if cfg.get("geometry"):
            arch += f" ({cfg['geometry']})"
        runtime = {".onnx": "ONNX Runtime", ".xml": "OpenVINO"}.get(
            path.suffix.lower(), f"PyTorch on {getattr(runner, 'device', device)}")
        segment_array(runner, np.zeros((64, 64, 3), np.uint8))  # prepare it now, not in a request
        palette = visualize.full_palette(getattr(runner, "palette", None))  # (256, 3) uint8
        models.append(ServedModel(
            name=name, runner=runner,
            class_names=class_names_or_default(getattr(runner, "class_names", None), n),
            palette=[tuple(int(v) for v in c) for c in palette],
            source=path, description=f"{arch}, {runtime}"))
    return models


def crf_available() -> bool:
    """Whether dense-CRF refinement can run here (pydensecrf2 is installed)."""
    try:
        require_pydensecrf()
    except ConfigError:
        return False
    return True


def read_upload(path: str | Path, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The uploaded file ``path`` (shown to the user as ``name``) as uint8 (H, W, 3).

    Raises a DataError whose one-line message names the upload, the problem and the fix:
    empty file, not an image, truncated or corrupt, or more than ``max_pixels`` pixels
    (read from the header: a decompression bomb is refused before any pixel is decoded).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"the upload {name} did not reach the server; upload it again") from None
    if size == 0:
        raise DataError(f"{name} is empty (0 bytes); upload an image file (JPEG, PNG, WebP, ...)")
    wh = _declared_size(path, name, max_pixels)
    if wh is not None and wh[0] * wh[1] > max_pixels:
        w, h = wh
        raise DataError(f"{name} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), above this server's limit "
                        f"of {max_pixels / 1e6:g} MP; resize it, or restart fcnseg serve with a larger "
                        f"--max-pixels")
    try:
        return image_files.read_image(path)
    except DataError as e:  # its message names the server's temporary copy: name the upload
        raise DataError(str(e).replace(str(path), name)) from None


def _declared_size(path: Path, name: str, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from the header, or None if Pillow cannot open it (read_image says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the caller checks the size
            with Image.open(path, formats=image_files.IMAGE_FORMATS) as im:
                return im.size
    except Image.DecompressionBombError:  # over twice Pillow's MAX_IMAGE_PIXELS
        raise DataError(f"{name} declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP (a "
                        f"decompression bomb or a corrupt header); this server takes images up to "
                        f"{max_pixels / 1e6:g} MP: resize it") from None
    except Exception:  # noqa: BLE001 - not an image, bad header...: read_image reports it clearly
        return None


def segment(model: ServedModel, image: np.ndarray, crf: bool = False) -> Segmentation:
    """Segment ``image`` with ``model``'s shared runner, as ``fcnseg predict --tile auto`` does."""
    t0 = time.perf_counter()
    labels = segment_array(model.runner, image, tile=TILE, crf=crf)  # uint8 (H, W)
    return Segmentation(labels=labels, seconds=time.perf_counter() - t0,
                        tiling=resolve_tiling(TILE, None, image.shape[:2]), crf=crf)


def class_shares(labels: np.ndarray) -> list[tuple[int, float]]:
    """``[(class, fraction of the image), ...]`` for the classes present, largest first."""
    counts = np.bincount(labels.ravel(), minlength=256)  # (256,)
    present = [int(c) for c in np.flatnonzero(counts) if c != IGNORE_INDEX]
    total = labels.size
    return sorted(((c, counts[c] / total) for c in present), key=lambda t: (-t[1], t[0]))


def preview(image: np.ndarray, labels: np.ndarray, model: ServedModel, alpha: float) -> np.ndarray:
    """The overlay the page shows: uint8 (h, w, 3), at most PREVIEW_MAX_SIDE px on a side."""
    blended = visualize.blend(image, labels, model.palette, alpha)
    h, w = blended.shape[:2]
    scale = PREVIEW_MAX_SIDE / max(h, w)
    if scale >= 1:
        return blended
    small = Image.fromarray(blended).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                            Image.BILINEAR)
    return np.asarray(small)


def write_labels(labels: np.ndarray, model: ServedModel, path: Path) -> Path:
    """The palette PNG of ``fcnseg predict``: class indices, the model's colours."""
    image_files.write_palette_png(labels, model.palette, path)
    return path


def write_overlay(image: np.ndarray, labels: np.ndarray, model: ServedModel, alpha: float,
                  path: Path) -> Path:
    """The overlay of ``fcnseg predict`` (full size, legend on the right)."""
    atomic_save_image(visualize.overlay(image, labels, model.palette, model.class_names, alpha), path)
    return path


def upload_stem(orig_name: str | None) -> str:
    """A safe file-name stem for the downloads of an upload called ``orig_name``."""
    return safe_name(Path(orig_name).stem) if orig_name else "image"


class Scratch:
    """A temporary folder for the files offered for download, one sub-folder per request.

    Gradio copies a returned file into its own cache, so ours are only needed for a moment;
    folders older than ``keep_seconds`` are removed whenever a new one is made (disk stays flat).
    """

    def __init__(self, keep_seconds: float = 900.0):
        self.root = Path(tempfile.mkdtemp(prefix="fcnseg-serve-"))
        self.keep_seconds = keep_seconds

    def new(self) -> Path:
        self.prune()
        folder = self.root / "requests" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def prune(self) -> None:
        cutoff = time.time() - self.keep_seconds
        for d in (self.root / "requests").glob("*"):
            try:
                if d.stat().st_mtime < cutoff:
                    shutil.rmtree(d, ignore_errors=True)
            except FileNotFoundError:  # another request pruned it first
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def make_examples(folder: Path, class_names: Sequence[str] = (), n: int = N_EXAMPLES,
                  size: tuple[int, int] = (192, 256)) -> list[Path]:
    """``n`` example photos (shapes on textured backgrounds), the same every start; no downloads.

    A model trained on :mod:`fcnseg.data.synthetic` (``fcnseg demo``: its first class names are
    the shapes') gets examples of its own classes; any other model gets all the shapes.
    """
    known = 0
    while known < min(len(class_names), MAX_CLASSES) and class_names[known] == SHAPES[known][0]:
        known += 1
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image, _ = make_sample(np.random.default_rng(1000 + i), size, known if known >= 2 else MAX_CLASSES)
        path = folder / f"example_{i + 1}.png"
        atomic_save_image(Image.fromarray(image), path)
        paths.append(path)
    return paths
