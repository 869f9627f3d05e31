"""Staged training (the paper's Sec. 4.2): FCN-32s -> 16s -> 8s, each stage initialised from the
previous stage's best weights (:func:`fcnseg.models.upgrade`: new skips start at zero).

Each stage is a :class:`~fcnseg.engine.trainer.Trainer` run in ``<out>/<stage>``; ``--resume``
skips completed stages and ``--max-minutes`` is a budget for all stages together.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from fcnseg.engine import distributed as D
from fcnseg.engine.config import TrainConfig, resolve, split_model_name
from fcnseg.engine.run_dir import prepare_run_dir, read_summary, write_json
from fcnseg.engine.runtime import environment_info
from fcnseg.engine.trainer import Trainer, pct


def train_staged(cfg: TrainConfig, device: torch.device) -> Path:
    """FCN-32s -> 16s -> 8s: each stage in ``out/<stage>``, initialised from the previous best."""
    top = Path(cfg.out)
    D.run_on_main(lambda: prepare_run_dir(top, resume=cfg.resume, overwrite=cfg.overwrite, needs="config.json"))
    D.barrier()
    if D.is_main_process():
        write_json(top / "config.json", {"config": cfg.to_dict(), "environment": environment_info(device)})
    _, backbone = split_model_name(cfg.model)
    prev = cfg.init
    t0 = time.monotonic()
    stages = cfg.stages or []
    finals: dict[str, float | None] = {}
    for i, stage in enumerate(stages):
        sub_dir = top / stage
        if cfg.resume and read_summary(sub_dir).get("completed"):
            D.log_main(f"stage {stage}: already complete ({sub_dir}), skipping")
        else:
            # --max-minutes is a budget for all stages together.
            left = None if cfg.max_minutes is None else cfg.max_minutes - (time.monotonic() - t0) / 60
            if left is not None and left <= 0:
                D.log_main(f"time budget of {cfg.max_minutes:g} min used up before stage {stage}; "
                           f"continue with `fcnseg train --out {top} --resume`")
                break
            resume = cfg.resume and (sub_dir / "last.pt").is_file()
            sub = dataclasses.replace(cfg, model=f"fcn{stage}_{backbone}", out=str(sub_dir), stages=None, init=prev,
                                      backbone_weights=cfg.backbone_weights if prev is None else None,
                                      resume=resume, overwrite=not resume, max_minutes=left)
            D.log_main(f"== stage {i + 1}/{len(stages)}: {sub.model} -> {sub_dir}")
            Trainer(resolve(sub), device).run()
        finals[stage] = read_summary(sub_dir).get("best_miou")
        prev = str(sub_dir / "best.pt")
        if not read_summary(sub_dir).get("completed"):
            break  # stopped by the time budget: the next stage must not start from a half-trained one
    if D.is_main_process():
        complete = len(finals) == len(stages) and read_summary(top / stages[-1]).get("completed", False)
        write_json(top / "summary.json", {"stages": finals, "best": prev, "completed": complete})
        print(f"staged training {'done' if complete else 'stopped'}: "
              + ", ".join(f"{s} mIoU {pct(m)}" for s, m in finals.items()) + f"; latest model {prev}", flush=True)
    return top
