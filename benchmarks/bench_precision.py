"""What half precision changes in each inversion method's results, against float32, in one run.

The same model is loaded in float32 and in each half dtype, and the same images are inverted and
regenerated in each. For every (method, dtype) it reports what the book's numbers are made of:

- the seeds' relative difference from float32's, ``||z_half - z_32|| / ||z_32||`` (median over images);
- the change of the seeds' squared norm per entry, ``||z||^2 / d`` (the NLL under N(0, I) is half of it
  plus a constant, so this is the NLL's change per entry), mean over images;
- the regeneration's PSNR to the input image in each dtype and its change (dB, mean over images);
- seeds that diverged in each dtype (the other numbers are over the images that diverged in neither).

A method is **safe** in a half dtype when no more seeds diverge than in float32, the mean PSNR moves by at most
``PSNR_TOLERANCE_DB`` and the squared norm per entry by at most ``NORM_TOLERANCE`` (relative): both far
inside the differences the book reads (erased vs vanilla PSNR gaps of several dB; NLL histograms whose
spread is a few percent of their mean at 16k entries). The images are the shapes world's drawings at the
model's size, captioned as that world captions them.

``python -m benchmarks.run precision -- [--model tiny|sd14-random|PATH] [--images N] [--steps N]
[--methods ...] [--dtypes float16 bfloat16] [--record]``; on CUDA the default model is ``sd14-random``
(random weights in SD 1.4's shapes: a measurement of the architecture's arithmetic, not of the trained
SD 1.4). ``--record`` appends the table, with the device's name, to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from benchmarks.common import add_model_arguments, append_results, setup
from memories_lib.core.metrics import psnr
from memories_lib.core.models import load_ldm
from memories_lib.inversion import invert
from memories_lib.worlds.shapes.data import caption, make_dataset

PSNR_TOLERANCE_DB = 0.5
NORM_TOLERANCE = 0.01
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run_all(ldm, images: torch.Tensor, prompts: list[str], methods: list[str], steps: int, batch: int | None) -> dict:
    """Every method's inversion and regeneration of the images with one loaded model, by method."""
    return {m: invert(ldm, images, prompts, method=m, num_steps=steps, batch_size=batch, progress=False)
            for m in methods}


def load(path: Path, device: str, dtype: torch.dtype):
    if device == "cuda":
        torch.cuda.empty_cache()  # the previous dtype's model is gone before this one loads
    return load_ldm(path, device=device, dtype=dtype)


def compare(reference, half, images: torch.Tensor) -> dict:
    """The half-precision run against float32's, on the images neither diverged on; divergences counted apart."""
    ok = ~(reference.diverged | half.diverged)
    if not ok.any():
        raise RuntimeError("every image diverged in float32 or in half precision: nothing to compare")
    z32, zh = reference.seeds[ok].flatten(1).double(), half.seeds[ok].flatten(1).double()
    d = z32.shape[1]
    relative = ((zh - z32).norm(dim=1) / z32.norm(dim=1)).median().item()
    norm32, normh = (z32.pow(2).sum(1) / d), (zh.pow(2).sum(1) / d)
    psnr32 = psnr(reference.reconstruction[ok], images[ok]).mean().item()
    psnrh = psnr(half.reconstruction[ok], images[ok]).mean().item()
    norm_change = ((normh - norm32) / norm32).mean().item()
    diverged = (int(reference.diverged.sum()), int(half.diverged.sum()))
    safe = (diverged[1] <= diverged[0] and abs(psnrh - psnr32) <= PSNR_TOLERANCE_DB
            and abs(norm_change) <= NORM_TOLERANCE)
    return {"compared": int(ok.sum()), "seed_relative_difference": relative,
            "norm_per_entry_float32": norm32.mean().item(), "norm_per_entry_change": norm_change,
            "psnr_float32": psnr32, "psnr_half": psnrh, "psnr_change_db": psnrh - psnr32,
            "diverged_float32": diverged[0], "diverged_half": diverged[1], "safe": safe}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.run precision", description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    add_model_arguments(parser)
    parser.add_argument("--images", type=int, default=4, help="images (default 4)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    parser.add_argument("--methods", nargs="+", default=["ddim", "renoise"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=None, help="the project's batch size (default: the throughput rule)")
    args = parser.parse_args(argv)
    device = "cuda" if cuda else "cpu"
    path, label, name = setup(args, "bench-precision-")
    ldm = load(path, device, torch.float32)  # each dtype's model is loaded once, for every method
    size = ldm.image_size
    images, specs = make_dataset(args.images, size=size, seed=0)
    prompts = [caption(s) for s in specs]
    print(f"{label} on {name} ({device}), {args.images} shapes images at {size} x {size}, {args.steps} steps")

    result: dict = {"device": name, "model": label, "images": args.images, "steps": args.steps,
                    "methods": {m: {} for m in args.methods}}
    reference = run_all(ldm, images, prompts, args.methods, args.steps, args.batch)
    for dtype in args.dtypes:
        del ldm
        ldm = load(path, device, DTYPES[dtype])
        for method, half in run_all(ldm, images, prompts, args.methods, args.steps, args.batch).items():
            r = result["methods"][method][dtype] = compare(reference[method], half, images)
            print(f"  {method} {dtype}: seeds differ by {r['seed_relative_difference']:.4f} (relative), "
                  f"||z||^2/d {r['norm_per_entry_float32']:.4f} changes by {100 * r['norm_per_entry_change']:+.2f}%, "
                  f"PSNR {r['psnr_float32']:.2f} -> {r['psnr_half']:.2f} dB ({r['psnr_change_db']:+.2f}), "
                  f"diverged {r['diverged_float32']} / {r['diverged_half']}: {'safe' if r['safe'] else 'NOT safe'}",
                  flush=True)
    if args.record:
        record(result)
    return result


def record(result: dict) -> None:
    """Append one run to RESULTS.md: a row per (method, dtype)."""
    lines = [f"## precision: {result['model']} on {result['device']}, {result['images']} images, "
              f"{result['steps']} steps ({datetime.date.today().isoformat()})", "",
              f"Safe: no more divergences than float32, and on the images neither diverged on, mean PSNR within "
              f"{PSNR_TOLERANCE_DB} dB and ‖z‖²/d within {100 * NORM_TOLERANCE:g}% of float32's.", "",
              "| method | dtype | seed rel. difference | ‖z‖²/d change | PSNR float32 | PSNR half | "
              "diverged (float32 / half) | safe |",
              "|---|---|---|---|---|---|---|---|"]
    for method, rows in result["methods"].items():
        for dtype, r in rows.items():
            lines.append(f"| {method} | {dtype} | {r['seed_relative_difference']:.4f} | "
                         f"{100 * r['norm_per_entry_change']:+.2f}% | {r['psnr_float32']:.2f} | {r['psnr_half']:.2f} | "
                         f"{r['diverged_float32']} / {r['diverged_half']} | {'yes' if r['safe'] else 'no'} |")
    append_results(lines)


if __name__ == "__main__":
    main()
