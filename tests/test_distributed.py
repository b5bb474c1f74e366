"""Several processes on one job: the launcher's variables, the split, and the store's shared loops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from memories_lib.core import distributed
from memories_lib.core.profile import ModelSection
from memories_lib.core.store import Store

LAUNCH_VARIABLES = (distributed.WORLD_SIZE, distributed.RANK, distributed.LOCAL_RANK, distributed.LOCAL_WORLD_SIZE)


@pytest.fixture
def launched(monkeypatch):
    """Set the launcher's variables as ``accelerate launch`` does for one of its processes."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_to(index: int, count: int, local: int | None = None) -> None:
        monkeypatch.setenv(distributed.WORLD_SIZE, str(count))
        monkeypatch.setenv(distributed.RANK, str(index))
        monkeypatch.setenv(distributed.LOCAL_RANK, str(index if local is None else local))

    return set_to


def test_without_a_launcher_there_is_one_process(launched):
    assert distributed.launch() == distributed.Launch(0, 1, 0, 1)
    assert distributed.launch().is_main


def test_launch_reads_the_launcher_variables(launched):
    launched(3, 4, local=1)
    assert distributed.launch() == distributed.Launch(index=3, count=4, local_index=1, local_count=4)
    assert not distributed.launch().is_main


@pytest.mark.parametrize("rank, message", [("4", "RANK='4'"), ("", "RANK=''"), ("x", "not an integer")])
def test_broken_launcher_variables_are_named(launched, monkeypatch, rank, message):
    launched(0, 4)
    monkeypatch.setenv(distributed.RANK, rank)
    with pytest.raises(ValueError, match=message):
        distributed.launch()


@pytest.mark.parametrize("n, count", [(0, 2), (1, 3), (7, 2), (7, 3), (12, 4), (5, 8)])
def test_contiguous_share_is_accelerates_split(n, count):
    from accelerate import PartialState

    items = list(range(n))
    for index in range(count):
        state = SimpleNamespace(num_processes=count, process_index=index)
        with PartialState.split_between_processes(state, items) as theirs:
            assert list(distributed.contiguous_share(n, index, count)) == list(theirs)


@pytest.mark.parametrize("n, count", [(0, 2), (1, 1), (6, 1), (7, 2), (7, 3), (3, 5)])
def test_own_first_takes_every_batch_once_starting_with_its_share(n, count):
    for index in range(count):
        order = distributed.own_first(n, index, count)
        own = list(distributed.contiguous_share(n, index, count))
        assert sorted(order) == list(range(n))
        assert order[: len(own)] == own
        rest = order[len(own):]
        assert rest == sorted(rest, reverse=True), "the others' batches are taken from the end of the list"


def test_auto_and_cuda_mean_the_local_ranks_gpu_under_a_launcher(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ModelSection(1, device="auto").resolve_device() == "cuda"
    assert ModelSection(1, device="cuda").resolve_device() == "cuda"
    launched(3, 4, local=3)
    assert ModelSection(1, device="auto").resolve_device() == "cuda:1"  # local rank 3 of a 2-GPU machine
    assert ModelSection(1, device="cuda").resolve_device() == "cuda:1"
    assert ModelSection(1, device="cuda:0").resolve_device() == "cuda:0"  # a named GPU is kept
    assert ModelSection(1, device="cpu").resolve_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ModelSection(1, device="auto").resolve_device() == "cpu"


# --------------------------------------------------------------------------- the store's shared loops


def _value(item: int) -> tuple[dict, dict]:
    return {"x": torch.full((2,), float(item))}, {"item": item}


def test_map_items_passes_over_a_batch_another_process_holds_and_reads_it_once_stored(tmp_path):
    """A batch whose locks another process holds is left for last and read, not computed again."""
    store = Store(tmp_path / "store")
    items = list(range(6))
    key = lambda i: {"item": i}  # noqa: E731
    held = [store.key(item=i) for i in (0, 1)]  # the first batch (batch_size 2)
    holding, others_done, computed = threading.Event(), threading.Event(), []

    def other_process():  # a separate open file: flock conflicts as it would between processes
        with store.computing(held) as got:
            assert got
            holding.set()
            others_done.wait(timeout=30)
            for i in (0, 1):
                tensors, meta = _value(100 + i)  # what the other process computed
                store.put(held[i], tensors, meta)

    def compute(batch):
        computed.append(list(batch))
        if len(computed) == 2:  # every batch this process could take
            others_done.set()
        return [_value(i) for i in batch]

    thread = threading.Thread(target=other_process)
    thread.start()
    assert holding.wait(timeout=30)
    entries = store.map_items(items, key, compute, batch_size=2, progress=False)
    thread.join(timeout=30)
    assert computed == [[2, 3], [4, 5]], "the held batch is neither computed nor waited for first"
    assert [e.meta["item"] for e in entries] == [100, 101, 2, 3, 4, 5]


def test_a_batch_whose_process_stopped_is_computed_by_the_next(tmp_path):
    """The other process held the first batch and stopped without storing it (its locks went with it)."""
    store = Store(tmp_path / "store")
    held = [store.key(item=i) for i in (0, 1)]
    holding, others_done, computed = threading.Event(), threading.Event(), []

    def other_process():
        with store.computing(held) as got:
            assert got
            holding.set()
            others_done.wait(timeout=30)  # then "dies": releases the locks with nothing stored

    def compute(batch):
        computed.append(list(batch))
        if len(computed) == 2:
            others_done.set()
        return [_value(i) for i in batch]

    thread = threading.Thread(target=other_process)
    thread.start()
    assert holding.wait(timeout=30)
    entries = store.map_items(range(6), lambda i: {"item": i}, compute, batch_size=2, progress=False)
    thread.join(timeout=30)
    assert computed == [[2, 3], [4, 5], [0, 1]]
    assert [e.meta["item"] for e in entries] == list(range(6))


def test_map_items_waits_for_nobody_when_it_can_take_every_batch(tmp_path):
    store = Store(tmp_path / "store")
    with store.computing([store.key(item=9)], wait=False) as got:
        assert got
        with store.computing([store.key(item=9)], wait=False) as again:  # a second open file: held
            assert not again
    entries = store.map_items(range(3), lambda i: {"item": i}, lambda b: [_value(i) for i in b], batch_size=2,
                              progress=False)
    assert [e.meta["item"] for e in entries] == [0, 1, 2]


# Both multi-process tests: count the batches api.invert receives (each made to last 0.3 s), and under a launcher
# wait until every process has reached the loop (on a busy machine one could otherwise do it all). Needs `ready`.
COUNTED_TOGETHER = """\
calls = []
invert = api.invert
def logged(ldm, images, prompts, **kw):
    calls.append(len(prompts))
    time.sleep(0.3)
    return invert(ldm, images, prompts, **kw)
api.invert = logged
if "RANK" in os.environ:
    os.makedirs(ready, exist_ok=True)
    open(os.path.join(ready, os.environ["RANK"]), "w").close()
    while len(os.listdir(ready)) < int(os.environ["WORLD_SIZE"]):
        time.sleep(0.05)
"""

SHARED_LOOP = """\
import json, os, sys, time
import torch
from memories_lib.core.models import load_ldm
from memories_lib.core.images import ImageSet
from memories_lib.core.store import Store
from memories_lib.experiments import concept_memory
from memories_lib.inversion import api

torch.set_num_threads(1)
model, store_root, log, batch_size = sys.argv[1:5]
ready = store_root + ".ready"
{COUNTED_TOGETHER}
images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
prompts = tuple(f"a shape {i}" for i in range(10))
inv = concept_memory.invert_set(load_ldm(model), ImageSet("E", images, prompts), Store(store_root), method="ddim",
                                num_steps=3, batch_size=int(batch_size), progress=False)
torch.save({"seeds": inv.seeds, "psnr": torch.as_tensor(inv.psnr)}, log + ".pt")
with open(log + ".json", "w") as f:
    json.dump({"rank": os.environ.get("RANK"), "calls": calls}, f)
""".replace("{COUNTED_TOGETHER}", COUNTED_TOGETHER)


@pytest.mark.parametrize("batch_size", [2, 8])
def test_launched_processes_share_a_loop_and_get_a_single_process_numbers(tiny_ldm_path, tmp_path, batch_size):
    """Two processes (the launcher's variables set by hand) split invert_set's batches; the results are one's.

    Batches of 2: the single process's five batches, shared. Batches of 8: two batches of 10 images would leave
    one process idle, so the job cuts one batch of 5 for each."""
    script = tmp_path / "loop.py"
    script.write_text(SHARED_LOOP)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    base["OMP_NUM_THREADS"] = "1"

    def run(store: str, logs: list[str], count: int) -> None:
        procs = [subprocess.Popen([sys.executable, str(script), str(tiny_ldm_path), str(tmp_path / store),
                                   str(tmp_path / log), str(batch_size)],
                                  env={**base, **({} if count == 1 else {"WORLD_SIZE": str(count), "RANK": str(i),
                                                                         "LOCAL_RANK": str(i)})},
                                  stderr=subprocess.PIPE, text=True)
                 for i, log in enumerate(logs)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]

    run("two", ["rank0", "rank1"], 2)
    run("one", ["single"], 1)
    calls = [json.loads((tmp_path / f"{log}.json").read_text())["calls"] for log in ("rank0", "rank1", "single")]
    assert sum(calls[0]) + sum(calls[1]) == 10, "each image inverted once between the two processes"
    assert calls[0] and calls[1], "both processes took batches"
    assert set(calls[0] + calls[1]) == ({2} if batch_size == 2 else {5})
    assert calls[2] == ([2] * 5 if batch_size == 2 else [8, 2])
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    for log in ("rank0", "rank1"):  # both processes end with every result
        shared = torch.load(tmp_path / f"{log}.pt", weights_only=True)
        if batch_size == 2:  # the single process's batches: bit for bit its numbers
            assert torch.equal(shared["seeds"], single["seeds"]) and torch.equal(shared["psnr"], single["psnr"])
        else:  # other batches: the same numbers but for the last bits
            torch.testing.assert_close(shared["seeds"], single["seeds"], rtol=1e-4, atol=1e-4)
    entries = [Store(tmp_path / "two").get(p.stem) for p in (tmp_path / "two").rglob("*.json")]
    assert len(entries) == 10 and all(e is not None for e in entries)


def test_a_launched_job_sizes_its_batches_alike_in_every_process(launched, monkeypatch):
    """Not from the memory free at the moment (it differs between processes): a share of the device's total."""
    from memories_lib.core import throughput

    monkeypatch.delenv("MEMORIES_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(throughput, "available_memory", lambda device="cpu": 8 * 2**30)
    monkeypatch.setattr(throughput, "total_memory", lambda device="cpu": 64 * 2**30)
    monkeypatch.setattr(throughput.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("MEMORIES_THREADS", raising=False)
    assert throughput.memory_budget("cpu") == 2 * 2**30 and throughput.max_threads() == 16
    launched(1, 4)  # four processes on this machine: the total memory and the cores divided among them
    assert throughput.memory_budget("cpu") == 4 * 2**30 and throughput.max_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two machines of two processes each
    assert throughput.memory_budget("cpu") == 8 * 2**30 and throughput.max_threads() == 8


# --------------------------------------------------------------------------- a chapter under accelerate launch


SHARED_CHAPTER = """\
# Shared

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
model = ""  # the tiny model's folder
```

```{code-cell} ipython3
from memories_lib.book import show_banner

show_banner(profile, seed=0)
```

```{code-cell} ipython3
import json, os, time
import torch
from myst_nb import glue
from memories_lib.core.images import ImageSet
from memories_lib.core.models import load_ldm
from memories_lib.core.store import default_store
from memories_lib.experiments import concept_memory
from memories_lib.inversion import api

torch.set_num_threads(1)
ready = "ready"
{COUNTED_TOGETHER}
images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
inv = concept_memory.invert_set(load_ldm(model), ImageSet("E", images, ("a shape",) * 8), default_store(),
                                method="ddim", num_steps=3, batch_size=2, progress=False)
with open(f"calls-{os.environ.get('RANK', 'single')}.json", "w") as f:
    json.dump(calls, f)
glue("psnr_sum", float(inv.psnr.sum()), display=False)
glue("seed_sum", float(inv.seeds.double().sum()), display=False)
```
""".replace("{COUNTED_TOGETHER}", COUNTED_TOGETHER)


def _glued(path: Path) -> dict:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return {o["metadata"]["scrapbook"]["name"]: [v for k, v in o["data"].items() if k.endswith("text/plain")]
            for c in nb.cells for o in c.get("outputs", []) if o.get("metadata", {}).get("scrapbook")}


def test_a_chapter_under_accelerate_launch_shares_its_images(tiny_ldm_path, tmp_path):
    """``accelerate launch ... memories run``: both kernels invert a share; main writes the one executed copy."""
    from conftest import make_book_root

    root = make_book_root(tmp_path / "book", {"01_shared": SHARED_CHAPTER})
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", MEMORIES_CACHE=str(tmp_path / "two"))
    run = ["-m", "memories_lib.cli", "run", "01_shared", "--root", str(root), "--profile", "tiny",
           "-p", "model", str(tiny_ldm_path), "-q"]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run([*accelerate, *run], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Executed 01_shared.md") == 1, "only the main process reports the executed copy"
    executed = root / "_executed" / "01_shared.ipynb"
    two = _glued(executed)
    assert set(two) == {"psnr_sum", "seed_sum"}
    assert "**processes:** 2" in executed.read_text()  # the banner says how the chapter was computed
    calls = [json.loads((root / f"calls-{rank}.json").read_text()) for rank in ("0", "1")]
    assert calls[0] and calls[1] and sum(calls[0]) + sum(calls[1]) == 8 and set(calls[0] + calls[1]) == {2}

    env["MEMORIES_CACHE"] = str(tmp_path / "one")
    done = subprocess.run([sys.executable, *run], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _glued(executed) == two, "the numbers of one process"
    assert "**processes:**" not in executed.read_text()


FAILING_CHAPTER = """\
# Fails

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
```

```{code-cell} ipython3
[1, 2][5]
```
"""


def test_a_failing_chapter_under_accelerate_launch_is_named_by_each_process(tmp_path):
    """The failing cell is named as in a single process; only the main process keeps an executed copy."""
    from conftest import make_book_root

    root = make_book_root(tmp_path / "book", {"01_fails": FAILING_CHAPTER})
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", MEMORIES_CACHE=str(tmp_path / "cache"))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run([*accelerate, "-m", "memories_lib.cli", "run", "01_fails", "--root", str(root), "-q"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    # Whichever process fails first stops the job (the launcher ends the other); each names the cell.
    assert "01_fails.md failed in cell" in done.stderr and "'[1, 2][5]'): IndexError" in done.stderr
    if "The executed copy is at" in done.stderr:  # the main process's copy, kept for reading
        assert (root / "_executed" / "01_fails.ipynb").is_file()
    executed = {p.name for p in (root / "_executed").glob("*")} if (root / "_executed").exists() else set()
    assert executed <= {"01_fails.ipynb"}, "the other process writes nothing into _executed"
