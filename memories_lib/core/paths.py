"""Where the project keeps its caches (trained models, erased variants, results)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the project's caches: ``$MEMORIES_CACHE`` or ``~/.cache/memories_lib``."""
    root = os.environ.get("MEMORIES_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "memories_lib"
    path.mkdir(parents=True, exist_ok=True)
    return path


#: When set, the file in which this process (and the processes it starts) notes every entry it writes
#: to the cache, one line each. The book's chapter runner sets it for the kernel of each chapter, so
#: that a run counts what it computed itself, not what a chapter running beside it wrote.
CACHE_WRITES_ENV = "MEMORIES_CACHE_WRITES"


def note_cache_write(path: str | Path) -> None:
    """Note one entry written to the cache (a result, a trained or erased model's folder)."""
    log = os.environ.get(CACHE_WRITES_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{path}\n")


def count_cache_writes(log: str | Path) -> int:
    """How many entries were noted in ``log`` (0 when nothing was written)."""
    try:
        return sum(1 for line in Path(log).read_text(encoding="utf-8").splitlines() if line.strip())
    except FileNotFoundError:
        return 0
