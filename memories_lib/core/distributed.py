"""Several processes on one job (``accelerate launch``): how they share the work.

``accelerate launch --num_processes K ...`` (or torchrun) starts K copies of a program and gives
each its place in the job through environment variables; :func:`launch` reads them. The copies of
``memories run``, ``memories book`` and ``memories audit`` all do the same work, and the results
store shares it among them without any message between the processes. Each per-image loop of the
library goes through :meth:`Store.map_items <memories_lib.core.store.Store.map_items>`, which cuts
the items into batches alike in every process and takes them in :func:`own_first` order: this
process's contiguous share first (the split accelerate's ``PartialState.split_between_processes``
makes, :func:`contiguous_share`), then the batches the others have not reached, from the end of
the list. A batch another process is computing (its entries locked) is passed over and read once
it is stored, so every process ends the loop with every result, each computed once; the store's
entries are written atomically under per-entry locks, so the processes never corrupt or overwrite
one another. Nothing waits for a process that never reaches a loop, and a batch whose process
stopped (its locks go with it) is computed by the next process that reaches it.

Each process runs on the GPU of its local rank (:func:`local_gpu`); its batch sizes and CPU threads
come from a share of its device's total memory and of the machine's cores (``core.throughput``,
:func:`processes_on`), the same in every process, so that every process cuts a loop alike. The
main process (rank 0) writes what is written once: the executed notebooks, the book, the audit's
report.

A plain run (no launcher) is one process, which takes every batch in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: The variables a launcher (accelerate, torchrun) sets for every process of a job.
WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE = "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"


@dataclass(frozen=True)
class Launch:
    """This process's place in a launched job: ``index`` of ``count``; ``local_index`` of ``local_count`` on its machine."""

    index: int = 0
    count: int = 1
    local_index: int = 0
    local_count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0


def _variable(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the launcher's variable {name}={text!r} is not an integer") from None


def launch() -> Launch:
    """This process's :class:`Launch`, from the launcher's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``.

    Without a launcher (``WORLD_SIZE`` unset or 1) it is the only process. Nothing is exchanged
    with the other processes, so this never waits.
    """
    count = max(1, _variable(WORLD_SIZE, 1))
    if count == 1:
        return Launch()
    index = _variable(RANK, -1)
    if not 0 <= index < count:
        raise ValueError(f"{WORLD_SIZE}={count} but {RANK}={os.environ.get(RANK)!r}: a launcher sets both "
                         f"(RANK from 0 to WORLD_SIZE - 1)")
    return Launch(index=index, count=count, local_index=max(0, _variable(LOCAL_RANK, index)),
                  local_count=max(1, _variable(LOCAL_WORLD_SIZE, count)))


def contiguous_share(n: int, index: int, count: int) -> range:
    """The positions of process ``index`` of ``count`` among ``n`` items: contiguous, sizes differing by at most 1.

    The split of accelerate's ``PartialState.split_between_processes``: the first ``n % count``
    processes take one item more.
    """
    size, extra = divmod(n, count)
    start = index * size + min(index, extra)
    return range(start, start + size + (1 if index < extra else 0))


def own_first(n: int, index: int = 0, count: int = 1) -> list[int]:
    """The order in which process ``index`` of ``count`` takes ``n`` batches.

    Its own :func:`contiguous_share` first, front to back, then every other batch from the end of
    the list back: the others work front to back through their shares, so a process that is done
    helps where they will arrive last. One process takes them all in order.
    """
    own = contiguous_share(n, index, count)
    return [*own, *(b for b in reversed(range(n)) if b not in own)]


def local_gpu() -> str:
    """The GPU this process should use: ``cuda``, or under a launcher the one of its local rank (``cuda:N``).

    A job of K processes on a machine with K GPUs then puts one process on each.
    """
    import torch

    here = launch()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if here.count == 1 or gpus == 0:
        return "cuda"
    return f"cuda:{here.local_index % gpus}"


def auto_device() -> str:
    """What the device "auto" means here: :func:`local_gpu` when CUDA is present, else the CPU."""
    import torch

    return local_gpu() if torch.cuda.is_available() else "cpu"


def processes_on(device: str) -> int:
    """How many of the job's processes share ``device`` (this machine's CPU, or one GPU): 1 without a launcher."""
    import torch

    here = launch()
    if here.count == 1:
        return 1
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return -(-here.local_count // max(1, torch.cuda.device_count()))
    return here.local_count
