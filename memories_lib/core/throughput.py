"""How to feed the UNet: batch sizes under a memory budget, and torch's CPU threads per batch.

Nearly all of the book's time is UNet forwards, and on a CPU a small model's throughput depends
far more on how many rows go into one call than on anything else. Measured on the shapes world's
UNet (0.074 GFLOP per row, fp32, a 2-core machine, one call, issue 10 of this project):

==========  ====================  =====================
UNet rows   1 thread, rows/s      2 threads, rows/s
==========  ====================  =====================
1           114                   84
16          622                   527
64          794                   737
128         893                   1163
256         932                   1267
==========  ====================  =====================

Two rules follow, written here once and used by every loop of the library:

* **Batch size**: as many rows as fit, up to :data:`TARGET_ROWS` (256, where the table
  flattens), limited by a memory budget (:func:`memory_budget`) over the bytes one row costs
  (:func:`row_bytes`, measured once per model), and split into *equal* batches (300 images are
  two batches of 150, not 256 and 44: a small last batch runs at a small batch's rate).
* **Threads**: every core only for batches of at least :data:`MULTI_THREAD_ROWS` (128) rows;
  below that, one thread (two threads are slower than one at 16 to 64 rows: they spend the
  call waiting on each other). ``$MEMORIES_THREADS``, when set, is the most threads any call
  uses (set it to 1 when other jobs keep the machine busy, or when running several processes).

Inside the official ReNoise loop (150 images a batch, the mini world; ``make benchmarks``, same
machine, 2026-11-27) the second thread gains less: 2.60 against 2.42 images per second. That is
why ``make book`` runs independent work (training stages, erasures, chapters) in separate
single-thread processes (:mod:`.parallel`) and keeps this rule for work that runs alone.

On a GPU the thread rule does not apply and the budget is the device's free memory.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Any, Callable, Iterator

import torch

from . import distributed

#: Rows per UNet call where the measured throughput stops growing (see the module's table).
TARGET_ROWS = 256
#: The smallest UNet batch at which every core beats one thread (see the module's table).
MULTI_THREAD_ROWS = 128
#: Share of the available memory that one batch may take, unless ``$MEMORIES_MEMORY_BUDGET`` says otherwise.
BUDGET_SHARE = 0.25

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def max_threads() -> int:
    """The most torch CPU threads to use: ``$MEMORIES_THREADS``, else every core of the machine
    (in a launched job, ``core.distributed``, the cores divided among its processes on the machine).

    The count is fixed rather than read from the machine's load, because floating-point
    results are bit-for-bit reproducible only for a given thread count.
    """
    value = os.environ.get("MEMORIES_THREADS", "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"MEMORIES_THREADS must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"MEMORIES_THREADS must be a positive integer, got {value!r}")
        return threads
    return max(1, (os.cpu_count() or 1) // distributed.processes_on("cpu"))


def threads_for(rows: int) -> int:
    """Torch CPU threads for one UNet call of ``rows`` rows (the module's rule)."""
    return max_threads() if rows >= MULTI_THREAD_ROWS else 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's CPU thread count set to ``threads`` inside the block, restored after."""
    old = torch.get_num_threads()
    if threads != old:
        torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def threads_for_batch(rows: int, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The thread setting for a batch of ``rows`` UNet rows on ``device`` (nothing changes off the CPU)."""
    if torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    return torch_threads(threads_for(rows))


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1.5g"`` or a plain number of bytes, as bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not match:
        raise ValueError(f"not a size in bytes: {text!r} (e.g. 512M, 4G or 1000000)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return int(value)


def _memory(device: torch.device | str, total: bool) -> int:
    """Bytes of ``device``: in all (``total``) or free now (the CUDA allocator's free memory, the available RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, whole = torch.cuda.mem_get_info(device)
        return int(whole if total else free)
    field, pages = ("MemTotal:", "SC_PHYS_PAGES") if total else ("MemAvailable:", "SC_AVPHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free for new tensors on ``device``: the CUDA allocator's free memory, or the system's available RAM."""
    return _memory(device, total=False)


def total_memory(device: torch.device | str = "cpu") -> int:
    """Bytes of ``device`` in all: the GPU's memory, or the machine's RAM."""
    return _memory(device, total=True)


def memory_budget(device: torch.device | str = "cpu") -> int:
    """Bytes one batch may use: ``$MEMORIES_MEMORY_BUDGET`` (e.g. ``2G``), else a quarter of what is available.

    In a launched job (``core.distributed``) the processes must size their batches alike, so that
    they cut a shared loop alike; what is free differs from one process and moment to the next, so
    their budget is a quarter of the device's total memory, divided among the job's processes on it.
    """
    value = os.environ.get("MEMORIES_MEMORY_BUDGET", "").strip()
    if value:
        try:
            return parse_bytes(value)
        except ValueError as err:
            raise ValueError(f"MEMORIES_MEMORY_BUDGET: {err}") from None
    if distributed.launch().count > 1:
        return int(BUDGET_SHARE * total_memory(device) / distributed.processes_on(str(device)))
    return int(BUDGET_SHARE * available_memory(device))


_ROW_BYTES: dict[tuple, int] = {}


def output_bytes(module: torch.nn.Module, forward: Callable[[], Any]) -> int:
    """The bytes of every output of ``module`` and its submodules while ``forward()`` runs (without gradients).

    Tensors count, and outputs holding one in ``.sample`` (diffusers' output classes).
    """
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
            elif hasattr(t, "sample") and isinstance(t.sample, torch.Tensor):
                total += t.sample.numel() * t.sample.element_size()

    hooks = [m.register_forward_hook(count) for m in module.modules()]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in hooks:
            h.remove()
    return total


def row_bytes(unet: torch.nn.Module, sample_shape: tuple[int, ...], context_shape: tuple[int, ...]) -> int:
    """Bytes that one row of a UNet call keeps alive: the sum of every module's output for a batch of 1.

    That sum is what autograd keeps for a backward pass, so it bounds a forward without
    gradients from above as well. Measured with one forward of one row (a zero latent and zero
    text embeddings of ``context_shape`` = (tokens, width)) and remembered per model and shape.
    """
    param = next(unet.parameters())
    key = (id(unet), tuple(sample_shape), tuple(context_shape), param.dtype, param.device.type)
    if key in _ROW_BYTES:
        return _ROW_BYTES[key]
    x = torch.zeros((1, *sample_shape), device=param.device, dtype=param.dtype)
    c = torch.zeros((1, *context_shape), device=param.device, dtype=param.dtype)
    total = output_bytes(unet, lambda: unet(x, torch.tensor(1, device=param.device), encoder_hidden_states=c))
    _ROW_BYTES[key] = max(1, total)
    return _ROW_BYTES[key]


def split_evenly(n: int, most: int) -> int:
    """The batch size that covers ``n`` items in the fewest batches of at most ``most``, as equal as possible."""
    if n < 1:
        return 1
    most = max(1, int(most))
    return math.ceil(n / math.ceil(n / most))


def batch_size(
    n: int,
    rows_per_item: int = 1,
    *,
    bytes_per_row: int | None = None,
    budget: int | None = None,
    device: torch.device | str = "cpu",
    target_rows: int = TARGET_ROWS,
) -> int:
    """How many of ``n`` items to put in one batch (each item costs ``rows_per_item`` UNet rows).

    At most ``target_rows`` rows per call and, with ``bytes_per_row`` (:func:`row_bytes`), at
    most what fits in ``budget`` (default :func:`memory_budget`); then split evenly over the
    fewest batches. At least 1.
    """
    if n < 0 or rows_per_item < 1:
        raise ValueError(f"need n >= 0 and rows_per_item >= 1, got {n} and {rows_per_item}")
    most = max(1, target_rows // rows_per_item)
    if bytes_per_row is not None:
        budget = memory_budget(device) if budget is None else int(budget)
        most = min(most, max(1, budget // (bytes_per_row * rows_per_item)))
    return split_evenly(n, most)


def unet_batch_size(ldm, n: int, rows_per_item: int = 1, *, budget: int | None = None) -> int:
    """:func:`batch_size` for ``n`` items through ``ldm``'s UNet, with the bytes of one row measured on it."""
    unet = ldm.unet
    param = next(unet.parameters())
    sample_shape = tuple(ldm.latent_shape)
    context_shape = (ldm.tokenizer.model_max_length, unet.config.cross_attention_dim)
    per_row = row_bytes(unet, sample_shape, context_shape)
    return batch_size(n, rows_per_item, bytes_per_row=per_row, budget=budget, device=param.device)


def cap_torch_threads() -> None:
    """Torch's own thread count capped at ``$MEMORIES_THREADS`` when that is set (done on import).

    A process given one share of the cores (a chapter run side by side with another) then uses
    that share also outside the loops that set their threads per batch.
    """
    if os.environ.get("MEMORIES_THREADS", "").strip():
        try:
            torch.set_num_threads(min(torch.get_num_threads(), max_threads()))
        except ValueError:
            pass  # a bad value is reported where the threads are chosen, with the variable's name


cap_torch_threads()

__all__ = [
    "BUDGET_SHARE", "MULTI_THREAD_ROWS", "TARGET_ROWS", "available_memory", "batch_size", "cap_torch_threads",
    "max_threads",
    "memory_budget", "parse_bytes", "row_bytes", "split_evenly", "threads_for", "threads_for_batch",
    "torch_threads", "total_memory", "unet_batch_size",
]
