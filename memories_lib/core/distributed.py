"""Several processes on one job (``accelerate launch``): which share of the work is this process's.

Two ways to share, for two kinds of program.

*Chapters* (``memories run`` or ``memories book`` under a launcher): every process executes the
same notebook, and the store shares the work without any message between the processes. Each
per-image loop of the library goes through :meth:`Store.map_items
<memories_lib.core.store.Store.map_items>`, which cuts the items into the batches a single process
would run and takes them in :func:`own_first` order: this process's contiguous share first (the
split accelerate's ``PartialState.split_between_processes`` makes), then the batches the others
have not reached, from the end of the list. A batch another process is computing (its entries
locked) is passed over and read once it is stored, so every process ends the loop with every
result, computed once. :func:`launch` reads this process's place from the launcher's variables,
so nothing waits for a process that never reaches a loop, and a batch whose process stopped (its
locks go with it) is computed by the next process that reaches it.

*The audit* (``memories audit`` under a launcher): the K copies of the program started by
``accelerate launch --num_processes K ...`` join accelerate's process group; each asks
:func:`processes` for its rank and takes its share of a list with :meth:`Processes.share`
(accelerate's ``PartialState.split_between_processes``: contiguous, as even as possible, in order).
The copies write their results to the one results store (``core.store``), whose entries are
written atomically under per-entry locks, so they never corrupt or overwrite one another; after
:meth:`Processes.wait` (a barrier), the main process finds every result there and writes the summary.

A plain run (no launcher) is one process: everything is its share, and waiting does nothing.
accelerate is only imported when a launcher set up several processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

#: The variables a launcher (accelerate, torchrun) sets for every process of a job.
WORLD_SIZE, RANK, LOCAL_RANK = "WORLD_SIZE", "RANK", "LOCAL_RANK"


@dataclass(frozen=True)
class Launch:
    """This process's place in a launched job: ``index`` of ``count`` (``local_index`` on its machine)."""

    index: int = 0
    count: int = 1
    local_index: int = 0

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
    """This process's :class:`Launch`, from the launcher's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

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
    return Launch(index=index, count=count, local_index=max(0, _variable(LOCAL_RANK, index)))


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: ``index`` of ``count``, and how to split work and wait."""

    index: int = 0
    count: int = 1
    device: str = "cpu"  # the device the launcher gave this process
    _split: Callable[[list], Any] | None = None
    _wait: Callable[[], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous part of ``items`` (all of them in a single-process run)."""
        items = list(items)
        if self.count == 1 or self._split is None:
            return items
        with self._split(items) as mine:
            return list(mine)

    def wait(self) -> None:
        """Return once every process of the job has reached this point."""
        if self.count > 1 and self._wait is not None:
            self._wait()


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return launch().count


def processes() -> Processes:
    """This process's :class:`Processes`: from accelerate's ``PartialState`` under a launcher, else one process.

    Without CUDA the processes talk over gloo on the CPU (accelerate's multi-CPU mode); a CPU-only
    machine starts them with ``accelerate launch --multi_gpu --num_processes K`` (accelerate's
    launcher for several local processes, which the CPU-only state then runs on gloo).
    """
    if launched_processes() == 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(index=state.process_index, count=state.num_processes, device=str(state.device),
                     _split=state.split_between_processes, _wait=state.wait_for_everyone)


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
