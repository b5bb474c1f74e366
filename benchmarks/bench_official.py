"""Throughput against the official loop, and against a DDIM inversion written with diffusers, in one run.

(a) official: images per second of the project's path (the model loaded once, the images inverted
    and regenerated in batches) over a reimplementation of the official code's loop (for every
    image the model is loaded from disk again and one image is inverted and regenerated; the
    official code does not free the models it reloads, this one does, so that it can run long),
    for DDIM and ReNoise (the official run's settings). Goal >= 10 on a GPU, with an
    SD-1.4-sized random model at 512 x 512 (``--model sd14-random``, the default on CUDA); on a
    CPU the tiny model's ratio is reported without a goal. Also the project's one image at a time,
    and on CUDA the peak GPU memory of each.
(b) diffusers: time of the DDIM inversion loop a user writes with diffusers' ``DDIMInverseScheduler``
    (encode, then one UNet call and one ``step`` per timestep) over the project's DDIM inversion of
    the same images with the same model and steps (no regeneration on either side), for 1 image
    and for 16 images (the user's loop taking them one at a time). Goals: >= 0.95 for 1 image (as
    fast, within timing noise: both are the same UNet calls), > 1 for 16.

``python -m benchmarks.run official -- [--model tiny|sd14-random|PATH] [--images N] [--steps N]
[--batch N] [--methods ddim renoise] [--loop-images K] [--no-diffusers] [--models-dir DIR] [--record]``; ``--record`` appends the results, with the device's name, to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import add_model_arguments, append_results, setup
from memories_lib.core.models import LDM, encode_images, encode_prompts, load_ldm
from memories_lib.inversion import invert

#: diffusers_one: "at least as fast", within the 5% that two timings of the same work differ by here (both
#: loops spend over 97% of their time in the same UNet calls: cProfile of 50 steps on the tiny model).
GOALS = {"official_speedup": (">=", 10.0), "diffusers_one": (">=", 0.95), "diffusers_many": (">", 1.0)}
MANY = 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """Seconds of one call and, on CUDA, its peak GPU memory in bytes (0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)


@torch.no_grad()
def diffusers_ddim_inversion(ldm: LDM, images: torch.Tensor, prompts: list[str], steps: int) -> torch.Tensor:
    """The loop a user writes with diffusers' inverse scheduler: z_0 from the encoder, then step by step to z_T."""
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler.from_config(ldm.scheduler.config)
    scheduler.set_timesteps(steps, device=ldm.device)
    latents = encode_images(ldm, images)
    cond = encode_prompts(ldm, prompts)
    for t in scheduler.timesteps:
        eps = ldm.unet(latents, t, encoder_hidden_states=cond).sample
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def official_loop(path: Path, images: torch.Tensor, prompts: list[str], method: str, steps: int,
                  device: str, dtype: torch.dtype) -> None:
    """The official loop's shape: for every image, the model loaded again, one image inverted and regenerated."""
    for i in range(images.shape[0]):
        ldm = load_ldm(path, device=device, dtype=dtype)
        invert(ldm, images[i : i + 1], prompts[i : i + 1], method=method, num_steps=steps, batch_size=1,
               progress=False)
        del ldm
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def verdict(name: str, value: float) -> tuple[str, bool]:
    op, goal = GOALS[name]
    ok = value >= goal if op == ">=" else value > goal
    return f"goal {op} {goal:g}: {'PASS' if ok else 'FAIL'}", ok


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.run official", description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    add_model_arguments(parser)
    parser.add_argument("--images", type=int, default=MANY, help=f"images of the throughput run (default {MANY})")
    parser.add_argument("--batch", type=int, default=None, help="the project's batch size (default: the throughput rule)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    parser.add_argument("--methods", nargs="+", default=["ddim", "renoise"])
    parser.add_argument("--dtype", default="float16" if cuda else "float32", choices=["float32", "float16"])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved pairs of (b) (default 5)")
    parser.add_argument("--loop-images", type=int, default=None,
                        help="images timed in the one-image-at-a-time loops (default: all): their cost per image does "
                             "not depend on how many there are, so a few give their rate at a fraction of the time")
    parser.add_argument("--no-diffusers", action="store_true", help="skip (b), the comparison with diffusers' loop")
    args = parser.parse_args(argv)
    if args.loop_images is not None and args.loop_images < 1:
        parser.error(f"--loop-images must be at least 1, got {args.loop_images}")
    loop = min(args.loop_images or args.images, args.images)
    device = "cuda" if cuda else "cpu"
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    path, label, name = setup(args, "bench-official-")
    ldm = load_ldm(path, device=device, dtype=dtype)
    dev = ldm.device
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, ldm.image_size, ldm.image_size, generator=g)
    prompts = ["a photo of a church"] * args.images
    print(f"{label} on {name} ({device}, {args.dtype}), {args.images} images ({loop} in the one-image loops), "
          f"{args.steps} steps, {torch.get_num_threads()} CPU thread(s)")

    result: dict = {"device": name, "model": label, "images": args.images, "loop_images": loop, "steps": args.steps,
                    "dtype": args.dtype}
    passed = {}
    for method in args.methods:
        run = lambda n, batch: lambda: invert(ldm, images[:n], prompts[:n], method=method,  # noqa: E731
                                              num_steps=args.steps, batch_size=batch, progress=False)
        invert(ldm, images, prompts, method=method, num_steps=2, batch_size=args.batch,  # warm-up: kernels, allocator
               progress=False)
        batched_s, batched_mem = timed(run(args.images, args.batch), dev)
        single_s, single_mem = timed(run(loop, 1), dev)
        official_s, official_mem = timed(
            lambda: official_loop(path, images[:loop], prompts[:loop], method, args.steps, device, dtype), dev)
        rates = {"batched_images_per_s": args.images / batched_s, "one_at_a_time_images_per_s": loop / single_s,
                 "official_loop_images_per_s": loop / official_s}
        speedup = rates["batched_images_per_s"] / rates["official_loop_images_per_s"]
        result[method] = {**rates, "official_speedup": speedup,
                          "peak_gpu_bytes": {"batched": batched_mem, "one_at_a_time": single_mem,
                                             "official_loop": official_mem}}
        line, ok = verdict("official_speedup", speedup)
        if cuda:
            passed[f"{method}_official_speedup"] = ok
        else:
            line = "(no goal on a CPU)"
        mem = (f"; peak GPU memory {batched_mem / 2**30:.2f} / {single_mem / 2**30:.2f} / "
               f"{official_mem / 2**30:.2f} GiB" if cuda else "")
        print(f"  (a) {method}: images/s batched {rates['batched_images_per_s']:.3f}, one at a time "
              f"{rates['one_at_a_time_images_per_s']:.3f}, official loop {rates['official_loop_images_per_s']:.3f}; "
              f"speedup {speedup:.1f}x {line}{mem}")

    # (b) against a DDIM inversion written with diffusers' DDIMInverseScheduler.
    for count, key in () if args.no_diffusers else ((1, "diffusers_one"), (min(MANY, args.images), "diffusers_many")):
        x, p = images[:count], prompts[:count]
        ours = lambda: invert(ldm, x, p, method="ddim", num_steps=args.steps, regenerate=False,  # noqa: E731
                              batch_size=args.batch, progress=False)
        theirs = lambda: [diffusers_ddim_inversion(ldm, x[i : i + 1], p[i : i + 1], args.steps)  # noqa: E731
                          for i in range(count)]
        ours(), theirs()
        # Median of interleaved pairs: both sides see the same load on a shared machine.
        ratio = statistics.median(timed(theirs, dev)[0] / timed(ours, dev)[0] for _ in range(args.repeats))
        result[key] = ratio
        line, passed[key] = verdict(key, ratio)
        print(f"  (b) diffusers' DDIMInverseScheduler loop / ours, {count} image(s): {ratio:.2f}  {line}")
    result["passed"] = passed
    if args.record:
        record(result)
    return result


def record(result: dict) -> None:
    """Append one run to RESULTS.md (a table row per method, with the device's name and the date)."""
    day = datetime.date.today().isoformat()
    loops = "" if result["loop_images"] == result["images"] else f" ({result['loop_images']} in the one-image loops)"
    lines = [f"## official: {result['model']} on {result['device']}, {result['dtype']}, {result['images']} images"
             f"{loops}, {result['steps']} steps ({day})", "",
             "| method | batched images/s | one at a time | official loop | speedup | peak GPU GiB (batched / one / official) |",
             "|---|---|---|---|---|---|"]
    for method, r in result.items():
        if isinstance(r, dict) and "official_speedup" in r:
            mem = r["peak_gpu_bytes"]
            lines.append(f"| {method} | {r['batched_images_per_s']:.3f} | {r['one_at_a_time_images_per_s']:.3f} | "
                         f"{r['official_loop_images_per_s']:.3f} | {r['official_speedup']:.1f}x | "
                         f"{mem['batched'] / 2**30:.2f} / {mem['one_at_a_time'] / 2**30:.2f} / "
                         f"{mem['official_loop'] / 2**30:.2f} |")
    if "diffusers_one" in result:
        lines += ["", f"diffusers' DDIMInverseScheduler loop / ours: {result['diffusers_one']:.2f} for 1 image, "
                  f"{result['diffusers_many']:.2f} for {min(MANY, result['images'])}."]
    append_results(lines)


if __name__ == "__main__":
    main()
