"""One loop shared by the processes of a launched job, against one process, as a ratio measured in one run.

K processes, started with the variables ``accelerate launch`` gives its processes (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``), invert the same N images through the results store's shared loop
(``concept_memory.invert_set``, DDIM) into an empty store, each on its local rank's GPU or with its
share of the CPU's cores; one process does the same into another empty store. Both follow the
library's rules for batches and threads (``core.throughput``), as the chapters do, unless
``--batch-size`` is given. The clocks start once every process has loaded the model, so loading is
not timed. Reported: the wall time of each side, the speedup (one process's time / the job's), the
images each process inverted (each image once in all), and whether the seeds are bit for bit the
single process's (expected when the loop has at least one batch per process; a smaller loop is cut
into one batch per process, and its numbers may then differ in the last bits).

Goal: a speedup of at least 0.6 x K.

``python -m benchmarks.run shared -- [--processes K] [--images N] [--batch-size B] [--steps S]
[--model tiny|sd14-random|PATH] [--record]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_model_arguments, append_results, setup

GOAL_PER_PROCESS = 0.6
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def worker(settings: dict) -> None:
    """One process of a side: load the model, wait for the others, invert the images, write what it measured."""
    from memories_lib.core import distributed, throughput
    from memories_lib.core.images import ImageSet
    from memories_lib.core.models import load_ldm
    from memories_lib.core.store import Store
    from memories_lib.experiments import concept_memory
    from memories_lib.inversion import api

    torch.set_num_threads(throughput.max_threads())  # every core, or this process's share of them in a job
    ldm = load_ldm(settings["model"], device=distributed.auto_device())
    calls = []
    invert = api.invert

    def counted(model, images, prompts, **kwargs):
        calls.append(len(prompts))  # one call per batch
        return invert(model, images, prompts, **kwargs)

    api.invert = counted
    n, size = settings["images"], ldm.image_size
    images = ImageSet("bench", torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)),
                      tuple(f"a picture {i}" for i in range(n)))
    ready = Path(settings["ready"])
    (ready / str(distributed.launch().index)).touch()
    while len(list(ready.iterdir())) < settings["processes"]:
        time.sleep(0.01)
    start = time.time()
    inv = concept_memory.invert_set(ldm, images, Store(settings["store"]), method="ddim", num_steps=settings["steps"],
                                    batch_size=settings["batch_size"], progress=False)
    if ldm.device.type == "cuda":
        torch.cuda.synchronize(ldm.device)
    end = time.time()
    out = Path(settings["out"])
    torch.save({"seeds": inv.seeds}, out.with_suffix(".pt"))
    out.with_suffix(".json").write_text(json.dumps({"start": start, "end": end, "batches": calls}))


def run_side(settings: dict, processes: int, folder: Path) -> dict:
    """Start ``processes`` workers (launched as a job when more than one) and gather what they measured."""
    folder.mkdir(parents=True)
    (folder / "ready").mkdir()
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    running = []
    for rank in range(processes):
        mine = {**settings, "processes": processes, "store": str(folder / "store"), "ready": str(folder / "ready"),
                "out": str(folder / f"process-{rank}")}
        launch = {} if processes == 1 else {"WORLD_SIZE": str(processes), "RANK": str(rank), "LOCAL_RANK": str(rank)}
        env = {**base, **launch}
        running.append(subprocess.Popen([sys.executable, "-m", "benchmarks.bench_shared", "worker", json.dumps(mine)],
                                        env=env, stderr=subprocess.PIPE, text=True,
                                        cwd=Path(__file__).resolve().parent.parent))
    for proc in running:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {proc.returncode}): {err[-2000:]}")
    measured = [json.loads((folder / f"process-{r}.json").read_text()) for r in range(processes)]
    seeds = [torch.load(folder / f"process-{r}.pt", weights_only=True)["seeds"] for r in range(processes)]
    return {"seconds": max(m["end"] for m in measured) - min(m["start"] for m in measured),
            "batches": [m["batches"] for m in measured], "seeds": seeds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks.run shared", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    parser.add_argument("--processes", type=int, default=gpus if gpus > 1 else 2,
                        help="processes of the job (default: one per GPU when there are several, else 2)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: the library's rule, as in the chapters)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    args = parser.parse_args(argv)
    if args.processes < 2 or args.images < 1 or (args.batch_size or 1) < 1 or args.steps < 1:
        parser.error("--processes must be at least 2, --images, --batch-size and --steps at least 1")
    path, label, device_name = setup(args, "bench-shared-")
    settings = {"model": str(path), "images": args.images, "batch_size": args.batch_size, "steps": args.steps}
    k = args.processes
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        one = run_side(settings, 1, Path(tmp) / "one")
        job = run_side(settings, k, Path(tmp) / "job")
    identical = all(torch.equal(s, one["seeds"][0]) for s in job["seeds"])
    inverted = [sum(b) for b in job["batches"]]
    speedup = one["seconds"] / job["seconds"]
    goal = GOAL_PER_PROCESS * k
    ok = speedup >= goal and sum(inverted) == args.images
    where = f"{gpus} GPU(s)" if gpus else f"CPU, {os.cpu_count()} cores"
    lines = [
        f"{label}: {args.images} images, DDIM {args.steps} steps, {where} ({device_name})",
        f"  one process: {one['seconds']:.2f} s in batches of {one['batches'][0]}",
        f"  {k} processes: {job['seconds']:.2f} s; batches each took: {job['batches']}",
        f"  speedup {speedup:.2f} (goal >= {goal:.1f})  {'PASS' if ok else 'FAIL'}; each image inverted once: "
        f"{sum(inverted) == args.images}; seeds bit for bit the single process's: {identical}",
    ]
    print("\n".join(lines))
    if args.record:
        append_results([f"## Shared loop, {k} processes ({datetime.date.today()}, {device_name})", "",
                        *(f"    {line}" for line in lines)])
    return {"seconds_one": one["seconds"], "seconds_job": job["seconds"], "speedup": speedup, "inverted": inverted,
            "batches_one": one["batches"][0], "batches_job": job["batches"], "identical": identical, "processes": k,
            "passed": {"speedup": ok}}


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(json.loads(sys.argv[2]))
    else:
        main()
