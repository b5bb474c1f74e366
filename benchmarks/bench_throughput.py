"""How close the book's inversion loop runs to the machine's limit, measured in one run.

(a) ``peak``: the machine's practical fp32 peak, a large matrix multiply (2048 x 2048) on the
    threads the loop uses (best of several), in GFLOP/s.
(b) ``unet_ratio``: the UNet's achieved GFLOP/s inside the official ReNoise inversion loop
    (FLOPs of its forward passes, counted by ``torch.utils.flop_counter``, over the time spent in
    them) at the batch size that :mod:`memories_lib.core.throughput` chooses and one thread, as
    every chapter runs in ``make book`` (the chapters run side by side, one process and one thread
    each, on two cores), divided by (a) on one thread; goal >= 0.5. ``loop_ratio`` is the same
    with the loop's whole wall time (VAE, text encoder, regularisation and bookkeeping included).
    The same is reported at the rule's threads for a chapter run alone (``unet_ratio_alone``).
(c) ``speedup``: images inverted per second with ReNoise now / before issue 10 (16 images a
    batch, one thread, the per-image auto-correlation loop of the regulariser), same images and
    settings, interleaved; reported with both throughputs.

``python -m benchmarks.run throughput -- [--profile mini] [--images N] [--steps S] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from memories_lib.core import throughput
from memories_lib.inversion import invert, renoise
from memories_lib.inversion.api import resolve, unet_rows_per_image

GOALS = {"unet_ratio": (">=", 0.5)}
BEFORE_BATCH, BEFORE_THREADS = 16, 1


def peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n fp32 matrix multiply with ``threads`` torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    with throughput.torch_threads(threads):
        a @ b
        best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def unet_flops_per_row(ldm) -> int:
    """FLOPs of one UNet forward of one row (a real caption's embeddings)."""
    from memories_lib.core.models import encode_prompts

    x = torch.zeros(1, *ldm.latent_shape)
    cond = encode_prompts(ldm, ["a red circle"])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ldm.unet(x, torch.tensor(500), encoder_hidden_states=cond)
    return int(counter.get_total_flops())


@contextmanager
def unet_timer(ldm) -> Iterator[dict]:
    """Count the rows and time of every UNet forward inside the block."""
    stats = {"rows": 0, "seconds": 0.0}
    forward = ldm.unet.forward

    def timed(sample, *args, **kwargs):
        start = time.perf_counter()
        out = forward(sample, *args, **kwargs)
        stats["seconds"] += time.perf_counter() - start
        stats["rows"] += sample.shape[0]
        return out

    ldm.unet.forward = timed
    try:
        yield stats
    finally:
        del ldm.unet.forward


def auto_corr_per_image(x, generators):
    """The regulariser's auto-correlation term as it ran before issue 10: a Python loop per image and channel.

    Also the tests' reference for the batched term (tests/test_throughput.py).
    """
    loss = x.new_zeros(())
    for b, generator in enumerate(generators):
        for c in range(x.shape[1]):
            level = x[b:b + 1, c:c + 1]
            while True:
                shift = int(torch.randint(0, max(level.shape[2] // 2, 1), (1,), generator=generator))
                for dim in (2, 3):
                    loss = loss + (level * torch.roll(level, shifts=shift, dims=dim)).mean() ** 2
                if level.shape[2] <= 8:
                    break
                level = F.avg_pool2d(level, kernel_size=2)
    return loss


@contextmanager
def before_issue_10() -> Iterator[None]:
    batched = renoise._auto_corr
    renoise._auto_corr = auto_corr_per_image
    try:
        with throughput.torch_threads(BEFORE_THREADS):
            yield
    finally:
        renoise._auto_corr = batched


def load(profile: str):
    from memories_lib.worlds import open_world

    world = open_world(profile)
    return world, world.base_model(progress=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.run throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini", help="a profile name (default: mini)")
    parser.add_argument("--images", type=int, default=150,
                        help="images inverted (default 150: one model's E, R and R_ctrl in chapter 4)")
    parser.add_argument("--steps", type=int, default=None, help="inversion steps (default: the profile's)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved before/after pairs (default 1)")
    args = parser.parse_args(argv)

    world, ldm = load(args.profile)
    steps = args.steps or world.profile.num_inference_steps
    images = world.reference_set(args.images, 0)
    x, prompts = images.images, list(images.prompts)
    config = resolve("renoise", steps)
    rows = unet_rows_per_image(config)
    batch = throughput.unet_batch_size(ldm, len(images), rows)
    alone = throughput.threads_for(rows * batch)
    flops = unet_flops_per_row(ldm)

    def after(threads: int) -> dict:
        with unet_timer(ldm) as stats, throughput.torch_threads(threads):
            seconds = _seconds(lambda: invert(ldm, x, prompts, method="renoise", num_steps=steps, batch_size=batch,
                                              progress=False))
        return {**stats, "wall": seconds}

    def before() -> dict:
        with before_issue_10():
            return {"wall": _seconds(lambda: invert(ldm, x, prompts, method="renoise", num_steps=steps,
                                                    batch_size=BEFORE_BATCH, progress=False))}

    result = {"model": f"profile {world.name}", "images": len(images), "steps": steps, "batch": batch,
              "unet_gflop_per_row": flops / 1e9}
    configs = {"": 1, "_alone": alone} if alone != 1 else {"": 1}
    runs = []
    for _ in range(args.repeats):
        runs.append({"before": before(), **{name: after(t) for name, t in configs.items()}})
    before_ips = len(images) / statistics.median(r["before"]["wall"] for r in runs)
    result["before_images_per_s"] = before_ips
    for name, threads in configs.items():
        best = min((r[name] for r in runs), key=lambda r: r["wall"])
        peak = peak_gflops(threads)
        unet = best["rows"] * flops / best["seconds"] / 1e9
        loop = best["rows"] * flops / best["wall"] / 1e9
        ips = len(images) / statistics.median(r[name]["wall"] for r in runs)
        result.update({f"threads{name}": threads, f"peak_gflops{name}": peak, f"unet_gflops{name}": unet,
                       f"loop_gflops{name}": loop, f"unet_ratio{name}": unet / peak, f"loop_ratio{name}": loop / peak,
                       f"unet_share{name}": best["seconds"] / best["wall"], f"after_images_per_s{name}": ips,
                       f"speedup{name}": ips / before_ips})
    op, goal = GOALS["unet_ratio"]
    ok = result["unet_ratio"] >= goal
    print(f"profile {world.name}: ReNoise (official), {len(images)} images, {steps} steps, the rule's batch {batch} "
          f"images ({rows * batch} UNet rows)")
    for name, threads in configs.items():
        where = "as in make book (chapters side by side)" if name == "" else "a chapter run alone"
        print(f"  {threads} thread(s), {where}:")
        print(f"    (a) fp32 peak (2048^3 matmul): {result['peak_gflops' + name]:.1f} GFLOP/s")
        line = f"  goal {op} {goal:g}: {'PASS' if ok else 'FAIL'}" if name == "" else ""
        print(f"    (b) UNet in the loop: {result['unet_gflops' + name]:.1f} GFLOP/s ({flops / 1e9:.4f} GFLOP/row), "
              f"ratio to peak {result['unet_ratio' + name]:.2f}{line}; whole loop {result['loop_gflops' + name]:.1f} "
              f"GFLOP/s, ratio {result['loop_ratio' + name]:.2f} (UNet {100 * result['unet_share' + name]:.0f}% "
              f"of the wall time)")
        print(f"    (c) images/s: before {before_ips:.2f} (batch {BEFORE_BATCH}, {BEFORE_THREADS} thread, per-image "
              f"auto-correlation), now {result['after_images_per_s' + name]:.2f}: {result['speedup' + name]:.2f}x")
    return {**result, "passed": {"unet_ratio": ok}}


if __name__ == "__main__":
    main()
