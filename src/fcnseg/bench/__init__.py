"""``fcnseg bench``: how fast the models run here, and how close to this machine's limit.

Sections (``--sections``, all by default):

- ``peak``: the machine's dense matmul rate (``torch.mm``, fp32 and bf16; fp16/TF32 on
  CUDA) with the same threads: the yardstick for the models' GFLOP/s.
- ``inference``: per model, input size and *variant* (fp32 eager, channels-last, the CPU
  fast path of :mod:`fcnseg.models.fastpath`, bf16 autocast / weights, ``torch.compile``,
  onnxruntime; AMP fp16/bf16 on CUDA): latency (median and IQR), images/s, FLOPs counted
  by :func:`fcnseg.models.count_flops`, achieved GFLOP/s and its fraction of the matmul
  peak, argmax agreement with fp32. The caffe geometry runs the fp32 variant for the
  modern-vs-caffe comparison. On CUDA with torchvision importable, torchvision's
  ``fcn_resnet50`` runs beside them (torchvision is imported only there).
- ``train``: training images/s (forward + backward + SGD step) at a crop size.
- ``loader``: data-loader images/s on camvid-voc with the training transforms.
- ``metrics``: ConfusionMatrix.update time as a share of evaluation time.
- ``scaling``: latency against input size for both geometries, linear fit in megapixels.

Then the targets of the performance issue are judged (PASS/MISS) from those numbers.
Models have random (He-initialised) weights: speed does not depend on weight values,
and the argmax agreement is measured on real images when the dataset is present.

Modules: :mod:`.config` (BenchConfig), :mod:`.variants` (the catalogue of runtime variants),
:mod:`.fixtures` (models and inputs), :mod:`.sections` (one function per section),
:mod:`.timing` (timing statistics, matmul peak, machine facts), :mod:`.run` (the driver),
:mod:`.targets` (PASS/MISS), :mod:`.tables` (the printed report), :mod:`.cli`. The names
below are the package's Python API (``benchmarks/*.py`` use them).
"""
from __future__ import annotations

from fcnseg.bench.config import SECTIONS, BenchConfig
from fcnseg.bench.fixtures import example_batch, random_model
from fcnseg.bench.run import SCHEMA, run_bench
from fcnseg.bench.sections import (bench_inference, bench_loader, bench_metrics, bench_peak, bench_scaling,
                                   bench_train)
from fcnseg.bench.tables import format_tables
from fcnseg.bench.targets import TARGETS, TORCHVISION_NAME, judge_targets, target_values
from fcnseg.bench.variants import RUNTIME_VARIANTS, VariantSkipped, prepare_variant

__all__ = ["BenchConfig", "run_bench", "bench_inference", "bench_peak", "bench_train", "bench_loader",
           "bench_metrics", "bench_scaling", "judge_targets", "target_values", "format_tables", "random_model",
           "example_batch", "prepare_variant", "VariantSkipped", "TARGETS", "TORCHVISION_NAME",
           "RUNTIME_VARIANTS", "SECTIONS", "SCHEMA"]
