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
