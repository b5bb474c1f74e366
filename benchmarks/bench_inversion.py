"""Inversion speed, as ratios measured in one run (so that the machine's speed cancels out).

(a) overhead: DDIM inversion wall time / (steps x one batched UNet forward), goal <= 1.05:
    the inversion loop should cost its UNet calls and nothing else.
(b) batching: throughput of ``invert(..., batch_size=16)`` / ``invert(..., batch_size=1)``
    on 16 images (VAE encoding included), goal >= 4 on CPU.

``python -m benchmarks.run inversion -- [--profile NAME] [--steps N] [--threads T] [--repeats R]``.
Without ``--profile`` a tiny random model is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from benchmarks.common import temporary_folder
from memories_lib.inversion import invert
from memories_lib.inversion.ddim import ddim_invert
from memories_lib.core.models import LDM, build_tiny_ldm, encode_images, encode_prompts, load_ldm

GOALS = {"overhead": ("<=", 1.05), "batch_speedup": (">=", 4.0)}
BATCH = 16


def _sync(ldm: LDM) -> None:
    if ldm.device.type == "cuda":
        torch.cuda.synchronize(ldm.device)


def timed(fn: Callable[[], object], ldm: LDM) -> float:
    """Wall time of one call of ``fn`` (CUDA work included)."""
    _sync(ldm)
    start = time.perf_counter()
    fn()
    _sync(ldm)
    return time.perf_counter() - start


def paired_ratio(numerator: Callable[[], object], denominator: Callable[[], object], ldm: LDM,
                 repeats: int) -> tuple[float, float, float]:
    """Median over ``repeats`` interleaved pairs of time(numerator) / time(denominator).

    Interleaving makes both sides of each ratio see the same load on a shared machine.
    Returns (median ratio, median numerator time, median denominator time); one warm-up each.
    """
    numerator(), denominator()
    pairs = [(timed(numerator, ldm), timed(denominator, ldm)) for _ in range(repeats)]
    return (statistics.median(a / b for a, b in pairs), statistics.median(a for a, _ in pairs),
            statistics.median(b for _, b in pairs))


def verdict(name: str, value: float) -> tuple[str, bool]:
    op, goal = GOALS[name]
    ok = value <= goal if op == "<=" else value >= goal
    return f"goal {op} {goal:g}: {'PASS' if ok else 'FAIL'}", ok


def load(profile_name: str | None) -> tuple[LDM, int, str]:
    """The model, its default step count and a label."""
    if profile_name is None:
        path = build_tiny_ldm(temporary_folder("bench-tiny-") / "tiny", seed=0, image_size=32)
        return load_ldm(path), 10, "tiny random model"
    from memories_lib.worlds import open_world

    world = open_world(profile_name)
    return world.base_model(), world.profile.num_inference_steps, f"profile {world.name}"


@torch.no_grad()
def measure(ldm: LDM, steps: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, ldm.image_size, ldm.image_size, generator=g)
    prompts = ["a picture"] * BATCH
    latents = encode_images(ldm, images)
    cond = encode_prompts(ldm, prompts)
    t = torch.as_tensor(int(ldm.scheduler.config.num_train_timesteps) // 2, device=ldm.device)
    x = latents.to(ldm.device, ldm.dtype)

    def unet_calls() -> None:  # the UNet forwards an inversion makes, and nothing else
        for _ in range(steps):
            ldm.unet(x, t, encoder_hidden_states=cond)

    overhead, invert_s, unet_calls_s = paired_ratio(
        lambda: ddim_invert(ldm, latents, cond, steps, progress=False), unet_calls, ldm, repeats)

    def run(batch_size: int) -> Callable[[], object]:
        return lambda: invert(ldm, images, prompts, method="ddim", num_steps=steps, regenerate=False,
                              batch_size=batch_size, progress=False)

    speedup, single_s, batched_s = paired_ratio(run(1), run(BATCH), ldm, repeats)
    return {
        "unet_forward_s": unet_calls_s / steps,
        "ddim_inversion_s": invert_s,
        "overhead": overhead,
        "batched_s": batched_s,
        "one_at_a_time_s": single_s,
        "batch_speedup": speedup,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.run inversion", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="a profile name (default: a tiny random model)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the profile's, 10 for tiny)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the machines are shared; 0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    ldm, default_steps, label = load(args.profile)
    steps = args.steps or default_steps
    result = measure(ldm, steps, args.repeats)
    print(f"{label}: device {ldm.device}, dtype {ldm.dtype}, latents {ldm.latent_shape}, "
          f"batch {BATCH}, {steps} steps, {torch.get_num_threads()} thread(s)")
    print(f"  UNet forward (batch {BATCH}): {result['unet_forward_s'] * 1e3:.2f} ms; "
          f"DDIM inversion: {result['ddim_inversion_s'] * 1e3:.1f} ms")
    passed = {}
    for name, text in (("overhead", "(a) inversion / (steps x UNet forward)"),
                       ("batch_speedup", f"(b) batch {BATCH} vs one at a time, throughput")):
        line, ok = verdict(name, result[name])
        passed[name] = ok
        print(f"  {text}: {result[name]:.3f}  {line}")
    return {**result, "steps": steps, "model": label, "threads": torch.get_num_threads(), "passed": passed}


if __name__ == "__main__":
    main()
