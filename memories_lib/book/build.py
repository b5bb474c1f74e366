"""Building the book: every chapter of ``_toc.yml`` executed into ``_executed/``, then ``jupyter-book build``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from ..core import distributed, parallel
from ..core.profile import Profile
from ..experiments.models import book_pairs, check_pairs, missing_erased_models, prepare_erased_models
from ..worlds import open_world
from . import execute, mathjax, statistics, terminal
from .parameters import (ParameterError, as_profile, chapter_parameters, notebook_parameters,
                         warn_unused_profile_parameters)
from .toc import EXECUTED_DIR, BookError, Chapter, chapters, find_root, front_matter


def warm_matplotlib() -> None:
    """Build matplotlib's font cache once, so no chapter prints the first-import warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.font_manager  # noqa: F401  (building the cache is the side effect)


def _jupyter_book() -> str:
    """The ``jupyter-book`` executable of this environment (else the one on the PATH)."""
    beside = Path(sys.executable).parent / "jupyter-book"
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if not found:
        raise BookError("jupyter-book is not installed in this environment (pip install 'jupyter-book<2')")
    return found


def prepare_models(profile: str | Path | Profile, progress: bool = True) -> None:
    """Build or train the profile's models here, before any chapter runs.

    The first build of the ``mini`` world trains it for many minutes; done here, its progress
    bars show in the terminal instead of disappearing into a chapter's kernel. The profile's
    erased models follow, several at once (:func:`~memories_lib.experiments.models.prepare_erased_models`),
    so that the chapters find them in the cache.
    """
    p = as_profile(profile)
    if progress:
        print(f"[memories] preparing the models of profile {p.name!r} (world {p.world.kind})", file=sys.stderr)
    world = open_world(p)
    check_pairs(world, book_pairs(world))  # every erased model's method and parameters, before the world trains
    world.prepare(progress=progress)
    missing = missing_erased_models(world)
    if missing and progress:
        print(f"[memories] computing {len(missing)} erased models ({', '.join(sorted({n for n, _ in missing}))}) "
              f"for the chapters, in parallel processes", file=sys.stderr)
    prepare_erased_models(world, progress=progress)


def expected_seconds(chapter: Chapter, profile: str, records: list[statistics.RunRecord]) -> float:
    """How long ``chapter`` is expected to take with an empty cache, to start the longest first.

    The latest cold run of the chapter with this profile in the execution log, else the estimate in
    the chapter's front matter (``memories: {cold_minutes: N}``, measured on the reference machine
    with ``mini``), else 0. Only the order of these numbers is used.
    """
    cold = [r.seconds for r in records if r.chapter == chapter.name and r.profile == profile and r.cache == "cold"]
    if cold:
        return cold[-1]
    minutes = (front_matter(chapter.source).get("memories") or {}).get("cold_minutes")
    return 60.0 * float(minutes) if isinstance(minutes, (int, float)) else 0.0


def longest_first(plans: list[tuple[Chapter, dict[str, Any]]], root: Path) -> list[tuple[Chapter, dict[str, Any]]]:
    """The chapters ordered by :func:`expected_seconds`, longest first (ties keep the toc order).

    Side by side, the build ends when its last chapter does: started first, the longest chapter
    runs while the others share the remaining cores (longest-processing-time-first scheduling).
    """
    records = statistics.read_log(root / EXECUTED_DIR / statistics.LOG_NAME)
    cost = {}
    for chapter, parameters in plans:
        profile = as_profile(parameters["profile"]).name if parameters.get("profile") is not None else "-"
        cost[chapter.name] = expected_seconds(chapter, profile, records)
    return sorted(plans, key=lambda plan: -cost[plan[0].name])


def execute_chapters(plans: list[tuple[Chapter, dict[str, Any]]], root: Path, progress: bool = True,
                     workers: int | None = None) -> None:
    """Execute the chapters into ``_executed/``, up to ``workers`` at a time, the longest first.

    Chapters share their heavy work only through the results store (a chapter asks for what
    another computes, and whoever asks first computes it under a lock), so they can run side by
    side. On a CPU every chapter then runs in its own process with one share of the cores, which
    does more work per second than one chapter at a time with every core (the book's loops are
    small-model batches, where a second thread gains 0-40% and a second process about 90%).
    ``workers`` defaults to one per allowed core (:func:`memories_lib.core.parallel.worker_count`);
    with more than one, the chapters start longest first (:func:`longest_first`).
    """
    n = parallel.worker_count(len(plans), workers)
    ordered = longest_first(plans, root) if n > 1 else plans
    tasks = [(chapter, parameters, root, progress) for chapter, parameters in ordered]
    if progress and n > 1:
        print(f"[memories] executing {len(tasks)} chapters, {n} at a time", file=sys.stderr)
    # the chapters share the terminal: each prints plain lines instead of rewriting one
    with parallel.child_environ(terminal.LINES_ENV, "1" if n > 1 else None):
        parallel.map_processes(_execute_one, tasks, workers=n, label=lambda task: f"chapter {task[0].name}",
                               quiet=not progress)


def _execute_one(task: tuple[Chapter, dict[str, Any], Path, bool]) -> None:
    chapter, parameters, root, progress = task
    if progress:
        print(f"[memories] executing {chapter.source.relative_to(root)} with {parameters}", file=sys.stderr)
    execute.run_notebook(chapter, parameters, chapter.executed, progress)


def build_book(
    profile: str | Profile,
    overrides: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    *,
    progress: bool = True,
) -> Path | None:
    """Execute every chapter of ``_toc.yml`` into ``_executed/`` and build the HTML book.

    Every chapter's run is logged in ``_executed/execution_log.jsonl``; the page *Execution
    statistics* (``book/execution.md``) includes the table written from that log.

    Parameters are checked for every chapter before anything runs: an override must be
    declared by at least one chapter and is given to the chapters that declare it; a key of the
    profile's ``parameters`` that no chapter declares is named in a warning
    (:func:`~memories_lib.book.parameters.unused_profile_parameters`).
    Returns ``<root>/_build/html/index.html``; raises BookError when a chapter or the build fails.

    Under a launcher (``accelerate launch``, see ``core.distributed``) every process executes the
    chapters one at a time in the book's order, sharing each chapter's per-image loops; the main
    process prepares the models and builds the book, and the others return None.
    """
    root = find_root() if root is None else Path(root).resolve()
    as_profile(profile)  # an unknown profile fails here, before anything runs
    overrides = dict(overrides or {})
    plans: list[tuple[Chapter, dict[str, Any]]] = []
    declared_anywhere: set[str] = set()
    skipped: list[Chapter] = []
    declared_by_book: set[str] = set()  # the skipped chapters' too: a profile's key for them is not a mistake
    for chapter in chapters(root):
        declared = notebook_parameters(chapter.source)
        declared_by_book.update(declared)
        if execute.not_applicable(chapter, profile):
            skipped.append(chapter)  # a placeholder page says why (its front matter's memories.worlds)
            continue
        declared_anywhere.update(declared)
        mine = {name: value for name, value in overrides.items() if name in declared}
        plans.append((chapter, chapter_parameters(chapter, profile, mine, declared)))
    unknown = sorted(set(overrides) - declared_anywhere)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {unknown}: no chapter declares them; "
            f"the chapters' parameters are: {', '.join(sorted(declared_anywhere)) or 'none'}"
        )
    warn_unused_profile_parameters(profile, declared_by_book)

    warm_matplotlib()  # in every process: none of their chapters then builds the font cache
    job = distributed.launch()
    if job.count > 1:
        # The processes go through the chapters together, so each chapter's loops are shared; the
        # others find the models main prepares in the cache, or wait for them under their locks.
        if not job.is_main:
            execute_chapters(plans, root, progress=False, workers=1)
            return None
        if progress:
            print(f"[memories] {job.count} processes share each chapter's images (accelerate launch)",
                  file=sys.stderr)
    mathjax.vendor_mathjax(root)
    prepare_models(profile, progress)
    for chapter in skipped:
        if progress:
            print(f"[memories] {execute.not_applicable(chapter, profile)} A page says so.", file=sys.stderr)
        execute.write_placeholder(chapter, profile)
    execute_chapters(plans, root, progress, workers=1 if job.count > 1 else None)
    statistics.write_statistics_page(root / EXECUTED_DIR, [chapter.name for chapter, _ in plans])

    cmd = [_jupyter_book(), "build", str(root), "-W", "-n", "--keep-going"]
    if progress:
        print(f"[memories] {' '.join(cmd)}", file=sys.stderr)
    done = subprocess.run(cmd, cwd=root, env=dict(os.environ))
    index = root / "_build" / "html" / "index.html"
    if done.returncode != 0:
        raise BookError(
            f"jupyter-book build failed (exit {done.returncode}); its warnings are printed above "
            f"and execution reports are under {root / '_build' / 'html' / 'reports'}"
        )
    if not index.is_file():
        raise BookError(f"jupyter-book build finished but {index} is missing")
    return index
