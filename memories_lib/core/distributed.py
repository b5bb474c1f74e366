"""Several processes on one job (``accelerate launch``): which share of the work is this process's.

A job started with ``accelerate launch --num_processes K ...`` runs K copies of the program; each
asks :func:`processes` for its rank and takes its share of a list with :meth:`Processes.share`
(accelerate's ``PartialState.split_between_processes``: contiguous, as even as possible, in
order). The copies write their results to the one results store (``core.store``), whose entries
are written atomically under per-entry locks, so they never corrupt or overwrite one another;
after :meth:`Processes.wait`, the main process finds every result there and writes the summary.

A plain run (no launcher) is one process: everything is its share, and waiting does nothing.
accelerate is only imported when a launcher set up several processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

#: The variables a launcher (accelerate, torchrun) sets for every process of a job.
WORLD_SIZE = "WORLD_SIZE"


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
    try:
        return max(1, int(os.environ.get(WORLD_SIZE, "1")))
    except ValueError:
        return 1


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
