"""Execution statistics: every chapter run is logged, and the book renders the log as a page.

Each successful execution of a chapter (``memories run``, ``memories book``) appends one JSON line
to ``execution_log.jsonl`` in the folder of the executed notebook (``_executed/`` for the book):
the chapter, the profile, the seconds papermill measured, the date, the machine, and the state of
the cache.

Cold and warm. The chapter's kernel notes every entry it writes to the cache (``$MEMORIES_CACHE``:
a result of the store, a trained world's stage, an erased model; ``core.paths.note_cache_write``),
so a chapter that runs beside it does not change its count. A run that wrote nothing found every
model and result it needed there: it is **warm**, and its time is that of rerunning the chapter
after a prose edit. A run that wrote something computed it: it is **cold**. A run that found part of
its results (an interrupted run resumed, one parameter changed) is cold too, so the cold time of
the page is the time of the latest run that computed anything, not necessarily of an empty cache.
A chapter that stores nothing (one that recomputes everything each time) is warm on every run.

``write_statistics_page`` writes ``_executed/execution_statistics.md``, the table that
``book/execution.md`` includes: per chapter and profile, the latest cold and the latest warm run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

LOG_NAME = "execution_log.jsonl"
PAGE_NAME = "execution_statistics.md"


def machine() -> dict[str, Any]:
    """The machine a chapter ran on: platform, CPU cores, torch threads, GPU (if any)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memories_threads": os.environ.get("MEMORIES_THREADS"),
        "gpu": gpu,
    }


@dataclass(frozen=True)
class RunRecord:
    """One execution of a chapter (a line of the log)."""

    chapter: str
    profile: str
    seconds: float
    date: str
    cache: str  # "cold" or "warm" (module docstring)
    cache_files_added: int  # entries the chapter's kernel wrote to the cache (the name is the log's)
    machine: dict[str, Any]

    @classmethod
    def from_json(cls, line: str) -> "RunRecord":
        raw = json.loads(line)
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


def record_run(log: Path, chapter: str, profile: str, seconds: float, cache_files_added: int,
               date: datetime.datetime | None = None) -> RunRecord:
    """Append one run to the log ``log`` and return it."""
    date = date or datetime.datetime.now(datetime.timezone.utc)
    record = RunRecord(
        chapter=chapter,
        profile=profile,
        seconds=round(float(seconds), 2),
        date=date.isoformat(timespec="seconds"),
        cache="warm" if cache_files_added <= 0 else "cold",
        cache_files_added=int(cache_files_added),
        machine=machine(),
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(json.dumps(asdict(record)) + "\n")
    return record


def read_log(log: Path) -> list[RunRecord]:
    """Every run of the log, in the order they ran (an absent log: none); unreadable lines are skipped."""
    if not log.is_file():
        return []
    records = []
    for line in log.read_text().splitlines():
        if line.strip():
            try:
                records.append(RunRecord.from_json(line))
            except (ValueError, KeyError, TypeError):
                continue
    return records


def papermill_seconds(notebook: Path) -> float | None:
    """The duration papermill wrote into an executed notebook's metadata (None when absent)."""
    try:
        meta = json.loads(notebook.read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError):
        return None
    duration = meta.get("duration")
    return float(duration) if isinstance(duration, (int, float)) else None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _machine_label(m: dict[str, Any]) -> str:
    threads = f"{m.get('torch_threads')} torch thread(s)"
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m.get('platform')}, {m.get('cpu_count')} cores, {threads}{gpu}"


def statistics_markdown(records: Iterable[RunRecord], chapters: Iterable[str]) -> str:
    """The table of the page: per chapter (in book order) and profile, the latest cold and warm run.

    Machines are named M1, M2, ... in the table and described in a list below it.
    """
    records = list(records)
    order = {name: i for i, name in enumerate(chapters)}
    latest: dict[tuple[str, str], dict[str, RunRecord]] = {}
    for r in records:  # later lines win
        latest.setdefault((r.chapter, r.profile), {})[r.cache] = r
    if not latest:
        return "No chapter run has been recorded yet: `memories book` records every chapter it executes.\n"
    keys = sorted(latest, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    machines: dict[str, str] = {}

    def cell(r: RunRecord | None) -> str:
        if r is None:
            return "not recorded"
        label = _machine_label(r.machine)
        name = machines.setdefault(label, f"M{len(machines) + 1}")
        return f"{_duration(r.seconds)} ({r.date[:10]}, {name})"

    lines = ["| chapter | profile | cold | warm | entries the cold run cached |", "|---|---|---|---|---|"]
    for chapter, profile in keys:
        runs = latest[chapter, profile]
        cold, warm = runs.get("cold"), runs.get("warm")
        lines.append(f"| {chapter} | {profile} | {cell(cold)} | {cell(warm)} | "
                     f"{cold.cache_files_added if cold else '-'} |")
    lines += ["", "Machines:", ""]
    lines += [f"- **{name}**: {label}" for label, name in machines.items()]
    lines += ["", f"{len(records)} run(s) recorded in `_executed/{LOG_NAME}`.", ""]
    return "\n".join(lines)


def write_statistics_page(executed_dir: Path, chapters: Iterable[str]) -> Path:
    """Write ``executed_dir/execution_statistics.md`` from the log there; returns its path."""
    executed_dir.mkdir(parents=True, exist_ok=True)
    page = executed_dir / PAGE_NAME
    page.write_text(statistics_markdown(read_log(executed_dir / LOG_NAME), chapters))
    return page
