"""The measurement sections of ``fcnseg bench``: matmul peak, inference, training, loader,
metrics and scaling. Each returns a JSON-ready dict (or list of records)."""
from __future__ import annotations

import gc
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fcnseg.bench.config import BenchConfig, model_kwargs_for
from fcnseg.bench.fixtures import example_batch, random_model
from fcnseg.bench.timing import Timing, fit_linear, matmul_peak, peak_rss_mb, synchronizer, time_callable
from fcnseg.bench.variants import RUNTIME_VARIANTS, VariantSkipped, prepare_variant
from fcnseg.constants import IGNORE_INDEX
from fcnseg.data.datasets import open_dataset
from fcnseg.data.transforms import eval_transforms, pad_collate, train_transforms
from fcnseg.engine.loader_errors import unwrapped_batches
from fcnseg.metrics import ConfusionMatrix
from fcnseg.models import count_flops


def bench_peak(device: torch.device, sizes: list[int], warmup: int, repeats: int, threads: int) -> dict:
    """Matmul peak per precision; fp32 is strict fp32 (TF32 off) on CUDA, with TF32 separately."""
    out: dict = {}
    if device.type == "cuda":
        warmup = max(warmup, 3)  # cuBLAS heuristics and GPU clocks settle over the first calls
        prev = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            out["fp32"] = matmul_peak(device, torch.float32, tuple(sizes), warmup=warmup, repeats=repeats)
            torch.backends.cuda.matmul.allow_tf32 = True
            out["tf32"] = matmul_peak(device, torch.float32, tuple(sizes), warmup=warmup, repeats=repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        out["fp16"] = matmul_peak(device, torch.float16, tuple(sizes), warmup=warmup, repeats=repeats)
        if torch.cuda.is_bf16_supported():
            out["bf16"] = matmul_peak(device, torch.bfloat16, tuple(sizes), warmup=warmup, repeats=repeats)
    else:
        for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            out[key] = matmul_peak(device, dtype, tuple(sizes), warmup=warmup, repeats=repeats,
                                   threads=threads)
    return out


def _peak_key(precision: str, device: torch.device, peak: dict | None) -> str:
    """Which peak an fp32 run is compared with: CUDA convs run TF32 when cuDNN allows it."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32 and peak and "tf32" in peak:
        return "tf32"
    return precision


def bench_inference(name: str, size: tuple[int, int], cfg: BenchConfig, device: torch.device,
                    peak: dict | None, geometry: str = "modern", variants: list[str] | None = None,
                    x: torch.Tensor | None = None, model: nn.Module | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """One record per variant: latency, throughput, FLOPs, GFLOP/s, fraction of peak, agreement."""
    if model is None:
        model = random_model(name, cfg.num_classes, geometry, cfg.seed, **model_kwargs_for(name, cfg))
    model = model.to(device).eval()
    flops = count_flops(model, size, batch=cfg.batch)
    input_note = "given"
    if x is None:
        x, input_note = example_batch(size, cfg.batch, cfg.data, cfg.seed)
    x = x.to(device)
    base = {"model": name, "geometry": geometry, "size": list(size), "batch": cfg.batch,
            "threads": cfg.threads, "device": str(device), "flops": flops, "input": input_note}
    with torch.inference_mode():
        ref = model(x).float()  # fp32 eager: the reference for agreement
    ref_labels, ref_scale = ref.max(1).indices, float(ref.abs().max())
    records = []
    for vname in variants if variants is not None else cfg.variants:
        rec = {**base, "variant": vname, "description": RUNTIME_VARIANTS[vname].description}
        try:
            with torch.inference_mode():
                prep = prepare_variant(vname, model, x, device, cfg.threads)
                timing = time_callable(prep.fn, warmup=cfg.warmup, repeats=cfg.repeats, device=device,
                                       threads=cfg.threads)
                out = prep.fn().float().to(ref.device)  # onnxruntime answers on the host
        except VariantSkipped as e:
            rec.update(status="skipped", reason=str(e))
            log(f"  {name} {geometry} {size[0]}x{size[1]} {vname}: skipped: {e}")
            records.append(rec)
            continue
        precision = prep.precision or RUNTIME_VARIANTS[vname].precision[device.type]
        pkey = _peak_key(precision, device, peak)
        has_peak = bool(peak) and pkey in peak
        gflops = flops / timing.median_s / 1e9
        rec.update(
            status="ok", precision=precision, setup_s=prep.setup_s, notes=prep.notes,
            latency=timing.to_dict(), images_per_s=cfg.batch / timing.median_s,
            gflop_per_s=gflops,
            peak_precision=pkey if has_peak else None,
            # Against the best matmul run: noise can only make the peak look lower, so this
            # fraction is never flattered by a slow peak measurement.
            fraction_of_peak=gflops / peak[pkey]["best_gflop_per_s"] if has_peak else None,
            fraction_of_median_peak=gflops / peak[pkey]["gflop_per_s"] if has_peak else None,
            agreement_vs_fp32=float(_agreement(out, ref_labels)),
            max_abs_diff_vs_fp32=float((out - ref).abs().max()), logit_scale=ref_scale,
            peak_rss_mb=peak_rss_mb()["self_mb"],
        )
        log(f"  {name} {geometry} {size[0]}x{size[1]} b{cfg.batch} {vname:16s} "
            f"{1e3 * timing.median_s:9.1f} ms (IQR {1e3 * timing.iqr_s:.1f})  {gflops:7.1f} GFLOP/s"
            + (f"  {100 * rec['fraction_of_peak']:5.1f}% of {pkey} peak" if rec["fraction_of_peak"] else ""))
        records.append(rec)
        if prep.cleanup is not None:
            prep.cleanup()
        del prep, out
        gc.collect()
    return records


def bench_train(name: str, cfg: BenchConfig, device: torch.device) -> dict:
    """Training images/s: zero_grad + forward + cross-entropy + backward + SGD step, fp32."""
    model = random_model(name, cfg.num_classes, "modern", cfg.seed, **model_kwargs_for(name, cfg)).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    gen = torch.Generator().manual_seed(cfg.seed)
    c = cfg.train_crop
    x = torch.randn(cfg.train_batch, 3, c, c, generator=gen).to(device)
    y = torch.randint(0, cfg.num_classes, (cfg.train_batch, c, c), generator=gen).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
        loss.backward()
        opt.step()

    timing = time_callable(step, warmup=1, repeats=cfg.train_repeats, device=device, threads=cfg.threads)
    return {"status": "ok", "model": name, "crop": c, "batch": cfg.train_batch, "precision": "fp32",
            "threads": cfg.threads, "step": timing.to_dict(),
            "images_per_s": cfg.train_batch / timing.median_s}


def bench_loader(cfg: BenchConfig, pin_memory: bool = False) -> dict:
    """Data-loader images/s: camvid-voc train split, train_transforms(crop), ``workers`` workers.

    The first batch (worker start-up) is untimed; then ``loader_repeats`` chunks of
    ``loader_batches`` batches are timed. Nothing consumes the batches, so this is the
    loader's own rate, which training could use at most.
    """
    if not cfg.data or not Path(cfg.data).is_dir():
        return {"status": "skipped", "reason": f"dataset not found at {cfg.data} (pass --data DIR)"}
    ds = open_dataset(cfg.data, "train", train_transforms(cfg.train_crop))
    needed = (1 + cfg.loader_repeats * cfg.loader_batches) * cfg.train_batch
    repeats = cfg.loader_repeats
    if needed > len(ds):  # stay within one epoch: a new epoch restarts the workers
        repeats = max(1, (len(ds) // cfg.train_batch - 1) // cfg.loader_batches)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.train_batch, shuffle=True, num_workers=cfg.workers,
                        collate_fn=pad_collate, drop_last=True, generator=gen, pin_memory=pin_memory)
    it = unwrapped_batches(loader)  # a worker's DataError reaches the user as one line
    next(it)  # warm-up: workers start, first batches are prefetched
    chunk_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(cfg.loader_batches):
            next(it)
        chunk_s.append(time.perf_counter() - t0)
    del it, loader
    timing = Timing(chunk_s, warmup=1)
    per_chunk = cfg.loader_batches * cfg.train_batch
    return {"status": "ok", "data": str(cfg.data), "images": len(ds), "crop": cfg.train_crop,
            "batch": cfg.train_batch, "workers": cfg.workers, "chunk": timing.to_dict(),
            "images_per_chunk": per_chunk, "images_per_s": per_chunk / timing.median_s}


def bench_metrics(name: str, cfg: BenchConfig, device: torch.device) -> dict:
    """ConfusionMatrix.update (argmax of the logits + counting) as a share of evaluation time
    (forward + update), over the first ``metric_images`` val images at their own size."""
    if cfg.data and Path(cfg.data).is_dir():
        ds = open_dataset(cfg.data, "val", eval_transforms())
        n_classes = ds.num_classes
        items = [ds[i] for i in range(min(cfg.metric_images, len(ds)))]
        source = f"{cfg.data} val, {len(items)} images"
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        n_classes = cfg.num_classes
        H, W = cfg.sizes[0]
        items = [(torch.randn(3, H, W, generator=gen), torch.randint(0, n_classes, (H, W), generator=gen))
                 for _ in range(cfg.metric_images)]
        source = f"random {H}x{W} images (no dataset at {cfg.data})"
    model = random_model(name, n_classes, "modern", cfg.seed, **model_kwargs_for(name, cfg)).to(device)
    cm = ConfusionMatrix(n_classes)
    sync = synchronizer(device)
    fwd_s, upd_s = [], []
    with torch.inference_mode():
        model(items[0][0][None].to(device))  # warm-up (oneDNN primitive creation, allocations)
        for img, mask in items:
            x, y = img[None].to(device), mask[None].to(device)
            sync()
            t0 = time.perf_counter()
            logits = model(x)
            sync()
            t1 = time.perf_counter()
            cm.update(logits, y)
            sync()
            fwd_s.append(t1 - t0)
            upd_s.append(time.perf_counter() - t1)
    fwd, upd = sum(fwd_s), sum(upd_s)
    return {"status": "ok", "model": name, "source": source, "images": len(items),
            "forward_ms": [1e3 * t for t in fwd_s], "update_ms": [1e3 * t for t in upd_s],
            "forward_total_ms": 1e3 * fwd, "update_total_ms": 1e3 * upd, "share": upd / (fwd + upd)}


def bench_scaling(cfg: BenchConfig, device: torch.device, log: Callable[[str], None] = print) -> dict:
    """Latency against input size (square inputs) per geometry; ms = slope * Mpx + intercept."""
    out: dict = {"model": cfg.scaling_model, "variant": cfg.scaling_variant, "batch": 1,
                 "threads": cfg.threads, "geometries": {}}
    sub = BenchConfig(**{**asdict(cfg), "batch": 1, "warmup": 1, "repeats": cfg.scaling_repeats,
                         "data": None})
    for geometry in cfg.scaling_geometries:
        model = random_model(cfg.scaling_model, cfg.num_classes, geometry, cfg.seed,
                             **model_kwargs_for(cfg.scaling_model, cfg))
        points = []
        for s in cfg.scaling_sizes:
            gen = torch.Generator().manual_seed(cfg.seed)
            x = torch.randn(1, 3, s, s, generator=gen)
            rec = bench_inference(cfg.scaling_model, (s, s), sub, device, None, geometry,
                                  [cfg.scaling_variant], x=x, model=model, log=log)[0]
            if rec["status"] != "ok":
                points.append({"size": s, "status": rec["status"], "reason": rec.get("reason")})
                continue
            ms = rec["latency"]["median_ms"]
            points.append({"size": s, "megapixels": s * s / 1e6, "median_ms": ms,
                           "iqr_ms": rec["latency"]["iqr_ms"], "flops": count_flops(model, (s, s)),
                           "gflop_per_s": rec["gflop_per_s"], "ms_per_megapixel": ms / (s * s / 1e6)})
        ok = [p for p in points if "median_ms" in p]
        fit = fit_linear([p["megapixels"] for p in ok], [p["median_ms"] for p in ok]) if len(ok) >= 2 else None
        out["geometries"][geometry] = {"points": points, "fit_ms_vs_megapixels": fit}
        del model
        gc.collect()
    return out


def _agreement(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of pixels whose argmax over classes equals ``labels``."""
    # max(1).indices, not argmax(1): same result (first maximum), but several times faster
    # on CPU for a reduction over the non-innermost (class) dimension.
    return (logits.max(1).indices == labels).float().mean()
