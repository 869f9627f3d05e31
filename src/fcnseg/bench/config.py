"""What a bench run measures and how (:class:`BenchConfig`, written into the JSON as ``config``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fcnseg.engine.workers import default_workers

SECTIONS = ("peak", "inference", "train", "loader", "metrics", "scaling")
# <repo>/../shared/data/camvid-voc for a source checkout (src layout: this file is src/fcnseg/bench/).
DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "camvid-voc"


@dataclass
class BenchConfig:
    """Everything a bench run depends on (goes into the JSON as ``config``)."""

    models: list[str] = field(default_factory=lambda: ["fcn8s_vgg16"])
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(360, 480)])
    batch: int = 1
    threads: int = 2
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    variants: list[str] = field(default_factory=lambda: ["fp32"])
    geometries: list[str] = field(default_factory=lambda: ["modern", "caffe"])
    num_classes: int = 21
    model_kwargs: dict = field(default_factory=dict)  # for the fcn*_small models (e.g. width)
    peak_sizes: list[int] = field(default_factory=lambda: [2048, 3072])
    train_crop: int = 256
    train_batch: int = 2
    train_repeats: int = 3
    workers: int = field(default_factory=default_workers)  # usable CPUs - 1
    data: str | None = str(DEFAULT_DATA)
    loader_batches: int = 4   # batches per timed chunk
    loader_repeats: int = 5   # timed chunks
    metric_images: int = 4
    scaling_model: str = "fcn8s_vgg16"
    scaling_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024])
    scaling_geometries: list[str] = field(default_factory=lambda: ["modern", "caffe"])
    scaling_variant: str = "fp32"
    scaling_repeats: int = 3
    seed: int = 0


def model_kwargs_for(name: str, cfg: BenchConfig) -> dict:
    """Backbone options apply to the configurable small backbone only (``--width``)."""
    return cfg.model_kwargs if name.endswith("_small") else {}
