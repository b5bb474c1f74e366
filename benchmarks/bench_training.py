"""Cold training time of the whole shapes world (VAE, text encoder + UNet, classifier, contrastive model).

Goal: everything trained from nothing in at most 20 minutes on 2 CPU cores. The ratio
reported is measured time / 20 minutes (goal <= 1).

``python -m benchmarks.run training -- [--config full] [--threads T] [--estimate K]``.
By default the whole training runs into a temporary cache (minutes). ``--estimate K``
instead times every stage twice, at 2 and at 2 + K steps, and extrapolates each stage
linearly to its configured step count (seconds to a minute; an estimate, said so).
Timings on a shared machine vary by 15-25% from run to run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import torch

from memories_lib.worlds.shapes import training
from memories_lib.worlds.shapes.config import resolve_config
from memories_lib.worlds.shapes.training.classifier import train_classifier
from memories_lib.worlds.shapes.training.contrastive import train_contrastive
from memories_lib.worlds.shapes.training.dataset import TrainingData
from memories_lib.worlds.shapes.training.text_unet import train_text_unet
from memories_lib.worlds.shapes.training.vae import train_vae

GOAL_S = 20 * 60
STEP_KEYS = {"vae": "vae", "unet": "unet", "classifier": "classifier", "contrastive": "contrastive"}


def cold_run(config: dict[str, Any], threads: int) -> dict[str, float]:
    """Train everything into an empty temporary cache; seconds per stage and in total."""
    with tempfile.TemporaryDirectory(prefix="bench-mini-") as root:
        old = os.environ.get("MEMORIES_CACHE")
        os.environ["MEMORIES_CACHE"] = root
        try:
            start = time.perf_counter()
            training.ensure_trained(config, threads=threads, progress=True)
            total = time.perf_counter() - start
            report = training.training_report(config)
        finally:
            if old is None:
                os.environ.pop("MEMORIES_CACHE", None)
            else:
                os.environ["MEMORIES_CACHE"] = old
    seconds = {stage: float(report[stage]["seconds"]) for stage in training.STAGES}
    seconds["data and saving"] = total - sum(seconds.values())
    seconds["total"] = total
    return seconds


def _time_stage(cfg: dict[str, Any], stage: str, steps: int, data: TrainingData, vae) -> float:
    key = STEP_KEYS[stage]
    short = {**cfg, key: {**cfg[key], "steps": steps}}
    start = time.perf_counter()
    if stage == "vae":
        train_vae(short, data, progress=False)
    elif stage == "unet":
        train_text_unet(short, vae, data, progress=False)
    elif stage == "classifier":
        train_classifier(short, data, progress=False)
    else:
        train_contrastive(short, data, progress=False)
    return time.perf_counter() - start


def estimate(config: dict[str, Any], extra_steps: int, threads: int) -> dict[str, float]:
    """Per-stage time extrapolated from runs of 2 and 2 + ``extra_steps`` steps (data made once)."""
    cfg = resolve_config(config)
    seconds: dict[str, float] = {}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        data = TrainingData(cfg, progress=False)
        data.train, data.eval  # noqa: B018  (draws both image sets now, inside the timed section)
        seconds["data and saving"] = time.perf_counter() - start
        vae, _ = train_vae({**cfg, "vae": {**cfg["vae"], "steps": 1}}, data, progress=False)
        for stage in training.STAGES:
            t_short = _time_stage(cfg, stage, 2, data, vae)
            t_long = _time_stage(cfg, stage, 2 + extra_steps, data, vae)
            per_step = (t_long - t_short) / extra_steps
            fixed = max(0.0, t_short - 2 * per_step)
            seconds[stage] = fixed + per_step * cfg[STEP_KEYS[stage]]["steps"]
            print(f"  {stage}: {per_step:.3f} s/step x {cfg[STEP_KEYS[stage]]['steps']} + {fixed:.1f} s fixed",
                  flush=True)
    finally:
        torch.set_num_threads(old)
    seconds["total"] = sum(seconds.values())
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.run training", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="full", help="training preset (default full)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: memories_lib.worlds.shapes.training.default_threads())")
    parser.add_argument("--estimate", type=int, default=0, metavar="K",
                        help="extrapolate from runs of 2 and 2 + K steps instead of a full cold run")
    args = parser.parse_args(argv)
    threads = args.threads or training.default_threads()
    config = resolve_config(args.config)
    kind = f"estimated from {args.estimate} extra steps" if args.estimate else "measured cold run"
    print(f"shapes world, config {args.config!r}, {threads} thread(s), {os.cpu_count()} core(s): {kind}", flush=True)
    seconds = estimate(config, args.estimate, threads) if args.estimate else cold_run(config, threads)
    for name, value in seconds.items():
        print(f"  {name:>16}: {value / 60:6.2f} min")
    ratio = seconds["total"] / GOAL_S
    ok = ratio <= 1.0
    print(f"  cold training / 20 min: {ratio:.3f}  goal <= 1: {'PASS' if ok else 'FAIL'}")
    return {"seconds": seconds, "ratio": ratio, "threads": threads, "estimated": bool(args.estimate),
            "passed": {"ratio": ok}}


if __name__ == "__main__":
    main()
