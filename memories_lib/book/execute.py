"""Executing a chapter: its parameters checked first, then papermill in the book root."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ..core import distributed, parallel, paths
from ..core.profile import Profile
from . import statistics, terminal
from .parameters import as_profile, chapter_parameters, notebook_parameters, warn_unused_profile_parameters
from .toc import BookError, Chapter, chapter_worlds, chapters, front_matter, read_notebook

KERNEL_NAME = "python3"


def _drop_unknown_parameter_warnings(record: logging.LogRecord) -> bool:
    """False for papermill's "Passed unknown parameter" warning.

    papermill's inspection misses an annotated ``NAME: int | None = ...``; the parameters it
    is given were checked against the cell (read with ``ast``) already.
    """
    return not record.getMessage().startswith("Passed unknown parameter")


def _kernel_over_unix_sockets(folder: Path) -> "Config":
    """The kernel's configuration: its channels as Unix sockets in ``folder`` rather than TCP ports.

    Nothing else on the machine can reach the kernel then, and ipykernel no longer warns, once per
    chapter, that its TCP channels are not encrypted.
    """
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": str(folder / "kernel")}})


def run_notebook(chapter: Chapter, parameters: Mapping[str, Any], output: Path, progress: bool) -> Path:
    """Execute ``chapter`` with papermill and ``parameters`` (already checked) into ``output``.

    A successful run is appended to the execution log beside ``output`` (``statistics``): its
    duration, and whether its kernel found everything in the cache (warm) or wrote something to it
    (cold), counted by the kernel itself, so that a chapter run beside it does not change the count.
    With ``progress``, stderr shows the cells and the library's loops and notes as the kernel runs
    them (``terminal``); they never reach the notebook.

    Under a launcher (``accelerate launch``, see ``core.distributed``) every process of the job
    executes the chapter, and their kernels share its per-image loops through the results store;
    only the main process writes ``output``, logs the run and shows progress. The others' executed
    copies are temporary.
    """
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    job = distributed.launch()
    nb = read_notebook(chapter.source)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill_log = logging.getLogger("papermill")
    papermill_log.addFilter(_drop_unknown_parameter_warnings)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="memories-run-") as tmp, \
                parallel.child_environ(paths.CACHE_WRITES_ENV, str(writes := Path(tmp) / "cache-writes")), \
                terminal.chapter_progress(chapter.name, progress and job.is_main) as progress_bar:
            ipynb = Path(tmp) / f"{chapter.name}.ipynb"
            jupytext.write(nb, ipynb)
            executed = output if job.is_main else Path(tmp) / f"{chapter.name}.executed.ipynb"
            try:
                papermill.execute_notebook(
                    str(ipynb),
                    str(executed),
                    parameters=dict(parameters),
                    kernel_name=KERNEL_NAME,
                    cwd=str(chapter.root),
                    progress_bar=progress_bar,
                    config=_kernel_over_unix_sockets(Path(tmp)),
                )
            except PapermillExecutionError as err:
                first_line = next((line for line in err.source.splitlines() if line.strip()), "")
                where = (f"The executed copy is at {output}" if job.is_main else
                         f"(in process {job.index} of {job.count} of the launched job)")
                raise BookError(
                    f"notebook {chapter.source.name} failed in cell {err.cell_index} (In [{err.exec_count}], "
                    f"starting {first_line.strip()!r}): {err.ename}: {err.evalue}. {where}"
                ) from None
            if not job.is_main:
                return output
            cached = paths.count_cache_writes(writes)
    finally:
        papermill_log.removeFilter(_drop_unknown_parameter_warnings)
    seconds = statistics.papermill_seconds(output) or time.perf_counter() - start
    profile = parameters.get("profile")
    statistics.record_run(
        output.parent / statistics.LOG_NAME,
        chapter.name,
        as_profile(profile).name if profile is not None else "-",
        seconds,
        cached,
    )
    return output


def _book_parameters(chapter: Chapter) -> set[str]:
    """The parameters that the chapters of ``chapter``'s book declare (its own alone without a table of contents)."""
    try:
        book = chapters(chapter.root)
    except BookError:
        book = []
    return {name for each in [chapter, *book] for name in notebook_parameters(each.source)}


def execute_chapter(
    chapter: Chapter,
    profile: str | Profile,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    *,
    output: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Execute one chapter with papermill and return the path of the executed notebook.

    The parameters are checked before anything runs, and a key of the profile's ``parameters`` that no
    chapter of the book declares is named in a warning. The kernel is ``python3`` (this
    interpreter's), the working directory the book root. The executed copy goes to ``output``,
    else ``out_dir/NAME.ipynb``, else ``<root>/_executed/NAME.ipynb``; it is written even when
    a cell fails, and the BookError names the notebook and the failing cell.
    """
    reason = not_applicable(chapter, profile)
    if reason:
        raise BookError(reason)
    parameters = chapter_parameters(chapter, profile, overrides)
    warn_unused_profile_parameters(profile, _book_parameters(chapter))
    if output is None:
        output = Path(out_dir) / f"{chapter.name}.ipynb" if out_dir is not None else chapter.executed
    return run_notebook(chapter, parameters, Path(output), progress)


def not_applicable(chapter: Chapter, profile: str | Profile) -> str | None:
    """Why ``chapter`` does not run with ``profile`` (its front matter names other world kinds), else None."""
    worlds = chapter_worlds(chapter.source)
    kind = as_profile(profile).world.kind
    if worlds is None or kind in worlds:
        return None
    note = (front_matter(chapter.source).get("memories") or {}).get("elsewhere", "")
    return (f"chapter {chapter.name} runs in a {' or '.join(worlds)} world; profile {as_profile(profile).name!r} "
            f"opens a {kind} world. {note}").strip()


def write_placeholder(chapter: Chapter, profile: str | Profile, output: Path | None = None) -> Path:
    """An executed copy of a chapter that does not run in the profile's world: its title and why it is not here."""
    import nbformat

    title = next((line for line in chapter.source.read_text(encoding="utf-8").splitlines() if line.startswith("# ")),
                 f"# {chapter.name}")
    worlds = chapter_worlds(chapter.source) or ()
    note = (front_matter(chapter.source).get("memories") or {}).get("elsewhere", "")
    kind = as_profile(profile).world.kind
    text = (f"{title}\n\nThis chapter runs in a {' or '.join(worlds)} world, and this book was built in a {kind} "
            f"world, so it was not executed. {note}").strip()
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_markdown_cell(text))
    notebook.metadata["memories"] = {"placeholder": True, "world": kind}
    output = output or chapter.executed
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(output))
    return output
