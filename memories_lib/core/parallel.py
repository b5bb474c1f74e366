"""Independent work in separate processes, one share of the CPU cores each.

A small model's work at small batch sizes (training steps of batch 4 to 64, an erasure method's
fine-tuning) does not get faster with more torch threads: on the 2-core machines of this project
two threads at 16 to 64 rows are slower than one (:mod:`.throughput`), while two such jobs in
two single-thread processes keep both cores busy. This module runs them so:
spawned processes (safe with torch), each with ``$MEMORIES_THREADS`` set to its share of the
cores, results returned in order, and a line per finished task on stderr.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Sequence

from .throughput import max_threads


def worker_count(tasks: int, workers: int | None = None) -> int:
    """How many processes to use for ``tasks`` tasks: ``workers``, else one per allowed core, at most one per task."""
    allowed = max_threads() if workers is None else int(workers)
    if allowed < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return max(1, min(allowed, tasks))


@contextlib.contextmanager
def child_environ(name: str, value: str | None) -> Iterator[None]:
    """``$name`` set to ``value`` (None: left as it is) for the processes started inside, restored after."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _init_worker(threads: int) -> None:
    import torch

    os.environ["MEMORIES_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def executor(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes sharing the allowed cores (at least one thread each)."""
    threads = max(1, max_threads() // workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[memories] {message}", file=sys.stderr, flush=True)


def map_processes(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int | None = None,
    label: Callable[[Any], str] = str,
    quiet: bool = False,
) -> list[Any]:
    """``[fn(item) for item in items]``, in up to ``workers`` processes (see :func:`worker_count`).

    ``fn`` must be importable (a module-level function) and ``items`` picklable. With one worker
    the items run here, in order. A task's exception is raised here, after the others finish.
    """
    items = list(items)
    n = worker_count(len(items), workers)
    if n <= 1:
        return [fn(item) for item in items]
    start = time.perf_counter()
    results: list[Any] = [None] * len(items)
    with executor(n) as pool:
        futures: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        done = 0
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            done += 1
            _say(f"{label(items[i])} done ({done}/{len(items)}, {time.perf_counter() - start:.0f} s, "
                 f"{n} processes)", quiet)
    return results


__all__ = ["executor", "map_processes", "worker_count"]
