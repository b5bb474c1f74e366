"""The book pipeline: papermill executes the chapters, Jupyter Book renders the executed copies.

A chapter is a jupytext MyST notebook ``notebooks/NAME.md``; ``_toc.yml`` lists its executed
copy as ``_executed/NAME``. Executing a chapter converts it to ``.ipynb``, checks the
parameters it is given against the ones its ``parameters`` cell declares (before any work
starts), and runs it with papermill in the repository root. Building the book executes every
listed chapter and then runs ``jupyter-book build -W -n --keep-going`` with execution off, so
the HTML shows exactly what ran.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import yaml

from .. import __version__
from ..core.profile import Profile, load_profile
from ..worlds import open_world

EXECUTED_DIR = "_executed"
SOURCE_DIR = "notebooks"
KERNEL_NAME = "python3"
MATHJAX_DIR = Path("_static") / "mathjax"
# The parts of the installed MathJax 3 (PyPI ``django-static-mathjax``) that a page may load:
# the combined TeX/MathML -> CommonHTML component and what it fetches lazily (fonts, TeX
# extensions, menu, accessibility).
MATHJAX_PARTS = ("tex-mml-chtml.js", "output", "input", "ui", "a11y", "adaptors", "sre")


class BookError(RuntimeError):
    """A chapter that failed to execute or a book that failed to build."""


class ParameterError(ValueError):
    """A notebook parameter that the chapter does not declare, or a value of the wrong type."""


@dataclass(frozen=True)
class Chapter:
    """One executed chapter of the book.

    name:   the chapter's name, e.g. ``01_background``;
    source: the jupytext MyST notebook, ``<root>/notebooks/NAME.md``;
    root:   the book's root (the repository root), the working directory of its execution.
    """

    name: str
    source: Path
    root: Path

    @property
    def executed(self) -> Path:
        """Where the book expects the executed copy: ``<root>/_executed/NAME.ipynb``."""
        return self.root / EXECUTED_DIR / f"{self.name}.ipynb"


class NotebookParameter(NamedTuple):
    """A parameter declared in a notebook's ``parameters`` cell.

    default: the default value (``ast.literal_eval`` of the source), or the source text
             itself when it is not a literal;
    type:    the type a value must have, or None when anything goes (a None default or a
             default that is not a literal).
    """

    default: Any
    type: type | None


# --------------------------------------------------------------------------- chapters


def find_root(start: str | Path | None = None) -> Path:
    """The book root: the first of ``start`` (default: the working directory) and its parents holding ``_toc.yml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    raise BookError(f"no _toc.yml in {here} or any parent folder: run this inside the book's repository")


def _toc_files(node: Any) -> list[str]:
    """Every ``file:`` entry of a parsed _toc.yml, in reading order (root first)."""
    files: list[str] = []
    if isinstance(node, Mapping):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                files.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or ():
                files.extend(_toc_files(child))
    elif isinstance(node, list):
        for child in node:
            files.extend(_toc_files(child))
    return files


def chapters(root: str | Path) -> list[Chapter]:
    """The executed chapters that ``<root>/_toc.yml`` lists (``_executed/NAME``), in order.

    Other entries (``book/...``) are plain prose pages and are not returned.
    """
    root = Path(root).resolve()
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise BookError(f"no table of contents at {toc_path}")
    try:
        toc = yaml.safe_load(toc_path.read_text())
    except yaml.YAMLError as err:
        raise BookError(f"{toc_path} is not valid YAML: {err}") from err
    found: list[Chapter] = []
    for entry in _toc_files(toc):
        entry = entry.removesuffix(".ipynb")
        parts = Path(entry).parts
        if len(parts) != 2 or parts[0] != EXECUTED_DIR:
            continue
        name = parts[1]
        source = root / SOURCE_DIR / f"{name}.md"
        if not source.is_file():
            raise BookError(f"_toc.yml lists {entry!r} but its source {source} does not exist")
        found.append(Chapter(name=name, source=source, root=root))
    return found


def resolve_chapter(root: str | Path, name_or_path: str | Path) -> Chapter:
    """A chapter by name (``01_background``) or by the path of its ``.md`` source."""
    root = Path(root).resolve()
    path = Path(name_or_path)
    if path.suffix == ".md":
        if not path.is_file():
            raise BookError(f"no notebook source at {path}")
        return Chapter(name=path.stem, source=path.resolve(), root=root)
    source = root / SOURCE_DIR / f"{path.name}.md"
    if source.is_file():
        return Chapter(name=path.name, source=source, root=root)
    known = sorted(p.stem for p in (root / SOURCE_DIR).glob("*.md"))
    raise BookError(f"unknown chapter {str(name_or_path)!r}: no {source}. Chapters: {', '.join(known) or 'none'}")


# --------------------------------------------------------------------------- parameters


def _read_notebook(source: Path):
    import jupytext

    try:
        return jupytext.read(source)
    except Exception as err:  # jupytext raises several types for a malformed file
        raise BookError(f"cannot read the notebook {source}: {err}") from err


def _literal_type(text: str) -> NotebookParameter:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NotebookParameter(default=text, type=None)
    return NotebookParameter(default=value, type=None if value is None else type(value))


def notebook_parameters(source_md: str | Path) -> dict[str, NotebookParameter]:
    """The parameters declared by the ``parameters`` cell of a MyST notebook, in order.

    The notebook is converted with jupytext and inspected with ``papermill.inspect_notebook``;
    each default is read as a Python literal to get the type a value must have.
    """
    import jupytext
    import papermill

    source = Path(source_md)
    nb = _read_notebook(source)
    if not any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.cells):
        raise ParameterError(f"{source}: no code cell is tagged 'parameters'")
    with tempfile.TemporaryDirectory(prefix="memories-inspect-") as tmp:
        ipynb = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(nb, ipynb)
        inspected = papermill.inspect_notebook(str(ipynb))
    return {name: _literal_type(info["default"]) for name, info in inspected.items()}


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_value(text: str) -> Any:
    """A command-line parameter value: parsed as YAML (``8`` -> 8, ``'[star]'`` -> ["star"]).

    Numbers in exponent notation that YAML 1.1 reads as strings (``1e-3``) become floats;
    an empty string stays an empty string.
    """
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParameterError(f"value {text!r} is not valid YAML: {err}") from None
    if isinstance(value, str) and _FLOAT_RE.match(text.strip()):
        return float(text)
    return value


def _describe(expected: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(expected, expected.__name__)


def _coerce(name: str, value: Any, spec: NotebookParameter, where: str) -> Any:
    """``value`` converted to the parameter's type, or a ParameterError."""
    expected = spec.type
    if expected is None:
        return value
    ok: bool
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected in (list, tuple):
        ok = isinstance(value, (list, tuple))
        value = expected(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ParameterError(
            f"parameter {name!r} of {where} must be {_describe(expected)} "
            f"(its default is {spec.default!r}), got {value!r} ({type(value).__name__})"
        )
    return value


def check_parameters(
    chapter: Chapter,
    overrides: Mapping[str, Any],
    declared: Mapping[str, NotebookParameter] | None = None,
) -> dict[str, Any]:
    """``overrides`` checked against the chapter's declared parameters and converted to their types.

    Raises ParameterError, naming the parameter, the notebook and the allowed names, for a
    name the notebook does not declare or a value of the wrong type. ``int`` is accepted where
    a ``float`` is declared, any value where the default is None.
    """
    declared = notebook_parameters(chapter.source) if declared is None else declared
    where = f"notebook {chapter.source.name}"
    checked: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in declared:
            raise ParameterError(
                f"unknown parameter {name!r} for {where}; its parameters are: {', '.join(declared) or 'none'}"
            )
        checked[name] = _coerce(name, value, declared[name], where)
    return checked


def chapter_parameters(
    chapter: Chapter,
    profile: str | Path | Profile,
    overrides: Mapping[str, Any] | None = None,
    declared: Mapping[str, NotebookParameter] | None = None,
) -> dict[str, Any]:
    """What papermill injects: ``profile``, the profile's parameters the notebook declares, then ``overrides``."""
    reference = profile_reference(profile)
    profile = _as_profile(profile)
    declared = notebook_parameters(chapter.source) if declared is None else declared
    overrides = dict(overrides or {})
    if "profile" in overrides:
        raise ParameterError("the profile is chosen with --profile, not as a parameter")
    if "profile" not in declared:
        raise ParameterError(f"notebook {chapter.source.name} does not declare the parameter 'profile'")
    from_profile = {name: value for name, value in profile.parameters.items() if name in declared}
    params = {"profile": reference}
    try:
        params.update(check_parameters(chapter, from_profile, declared))
    except ParameterError as err:
        raise ParameterError(f"{err} (the value comes from profile {profile.name!r})") from None
    params.update(check_parameters(chapter, overrides, declared))
    return params


# --------------------------------------------------------------------------- execution


def _as_profile(profile: str | Path | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def profile_reference(profile: str | Path | Profile) -> str:
    """What a notebook's ``profile`` parameter receives: a shipped profile's name, or the
    absolute path of a profile file (notebooks run in the book root, not the caller's folder)."""
    if isinstance(profile, Profile):
        return profile.name
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        return str(path.resolve())
    return str(profile)


def _run_notebook(chapter: Chapter, parameters: Mapping[str, Any], output: Path, progress: bool) -> Path:
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb = _read_notebook(chapter.source)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memories-run-") as tmp:
        ipynb = Path(tmp) / f"{chapter.name}.ipynb"
        jupytext.write(nb, ipynb)
        try:
            papermill.execute_notebook(
                str(ipynb),
                str(output),
                parameters=dict(parameters),
                kernel_name=KERNEL_NAME,
                cwd=str(chapter.root),
                progress_bar=progress,
            )
        except PapermillExecutionError as err:
            first_line = next((line for line in err.source.splitlines() if line.strip()), "")
            raise BookError(
                f"notebook {chapter.source.name} failed in cell {err.cell_index} (In [{err.exec_count}], "
                f"starting {first_line.strip()!r}): {err.ename}: {err.evalue}. "
                f"The executed copy is at {output}"
            ) from None
    return output


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

    The parameters are checked before anything runs. The kernel is ``python3`` (this
    interpreter's), the working directory the book root. The executed copy goes to ``output``,
    else ``out_dir/NAME.ipynb``, else ``<root>/_executed/NAME.ipynb``; it is written even when
    a cell fails, and the BookError names the notebook and the failing cell.
    """
    parameters = chapter_parameters(chapter, profile, overrides)
    if output is None:
        output = Path(out_dir) / f"{chapter.name}.ipynb" if out_dir is not None else chapter.executed
    return _run_notebook(chapter, parameters, Path(output), progress)


def vendor_mathjax(root: str | Path) -> Path:
    """Copy the installed MathJax 3 into ``<root>/_static/mathjax`` (once) so the book renders offline."""
    try:
        import mathjax
    except ImportError as err:
        raise BookError("MathJax is not installed: pip install django-static-mathjax") from err
    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (src / "tex-mml-chtml.js").is_file():
        raise BookError(f"the installed MathJax has no {src / 'tex-mml-chtml.js'}")
    dest = Path(root) / MATHJAX_DIR
    stamp = dest / ".source"
    if stamp.is_file() and stamp.read_text() == str(src):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for part in MATHJAX_PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dest / part)
        elif (src / part).is_file():
            shutil.copy2(src / part, dest / part)
    stamp.write_text(str(src))
    return dest


def warm_matplotlib() -> None:
    """Build matplotlib's font cache once, so no chapter prints the first-import warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.font_manager  # noqa: F401  (building the cache is the side effect)


def _jupyter_book() -> str:
    beside = Path(sys.executable).parent / "jupyter-book"
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if not found:
        raise BookError("jupyter-book is not installed in this environment (pip install 'jupyter-book<2')")
    return found


def prepare_models(profile: str | Path | Profile, progress: bool = True) -> None:
    """Build or train the profile's base model here, before any chapter runs.

    The first build of the ``mini`` world trains it for many minutes; done here, its progress
    bars show in the terminal instead of disappearing into a chapter's kernel.
    """
    p = _as_profile(profile)
    if progress:
        print(f"[memories] preparing the models of profile {p.name!r} (world {p.world.kind})", file=sys.stderr)
    open_world(p).prepare(progress=progress)


def build_book(
    profile: str | Profile,
    overrides: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Execute every chapter of ``_toc.yml`` into ``_executed/`` and build the HTML book.

    Parameters are checked for every chapter before anything runs: an override must be
    declared by at least one chapter and is given to the chapters that declare it.
    Returns ``<root>/_build/html/index.html``; raises BookError when a chapter or the build fails.
    """
    root = find_root() if root is None else Path(root).resolve()
    _as_profile(profile)  # an unknown profile fails here, before anything runs
    overrides = dict(overrides or {})
    book_chapters = chapters(root)
    plans: list[tuple[Chapter, dict[str, Any]]] = []
    declared_anywhere: set[str] = set()
    for chapter in book_chapters:
        declared = notebook_parameters(chapter.source)
        declared_anywhere.update(declared)
        mine = {name: value for name, value in overrides.items() if name in declared}
        plans.append((chapter, chapter_parameters(chapter, profile, mine, declared)))
    unknown = sorted(set(overrides) - declared_anywhere)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {unknown}: no chapter declares them; "
            f"the chapters' parameters are: {', '.join(sorted(declared_anywhere)) or 'none'}"
        )

    warm_matplotlib()
    vendor_mathjax(root)
    prepare_models(profile, progress)
    for chapter, parameters in plans:
        if progress:
            print(f"[memories] executing {chapter.source.relative_to(root)} with {parameters}", file=sys.stderr)
        _run_notebook(chapter, parameters, chapter.executed, progress)

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


# --------------------------------------------------------------------------- banner


def device_label(device: str) -> str:
    """``device`` in words: for CUDA the GPU's name, when one is visible."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device.startswith("cuda"):
        return f"{device} (not available on this machine)"
    return device


def banner_markdown(profile: str | Profile, seed: int, device: str | None = None) -> str:
    """The MyST admonition that opens a chapter: profile, device, versions and seed."""
    import torch

    prof = _as_profile(profile)
    resolved = device or prof.resolve_device()
    lines = [
        # no backticks in a fence's info string (CommonMark), hence no code span in the title
        f"```{{admonition}} Executed with the {prof.name} profile",
        ":class: note",
        "",
        f"{prof.description.strip()}",
        "",
        f"- **profile:** `{prof.name}` (world `{prof.world.kind}`, "
        f"{prof.num_inference_steps} inference steps)",
        f"- **device:** {device_label(resolved)}, dtype `{prof.model.dtype}`",
        f"- **seed:** {seed}",
        f"- **versions:** memories_lib {__version__}, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}",
        "```",
    ]
    return "\n".join(lines)


def show_banner(profile: str | Profile, seed: int, device: str | None = None) -> None:
    """Display the chapter's banner (a Markdown output that myst-nb renders as an admonition)."""
    from IPython.display import Markdown, display

    display(Markdown(banner_markdown(profile, seed, device)))


# --------------------------------------------------------------------------- Sphinx hook


def _drop_vendored_scripts(app, config) -> None:
    """Keep the vendored MathJax out of ``html_js_files``.

    Jupyter Book adds every ``.js`` file under ``<root>/_static`` to every page; for the
    vendored MathJax that would be dozens of components (two output renderers, the speech
    engine) on each page. ``mathjax_path`` loads the one entry point, which fetches the rest
    on demand.
    """
    prefix = MATHJAX_DIR.relative_to("_static").as_posix() + "/"

    def vendored(entry) -> bool:
        name = entry if isinstance(entry, str) else entry[0]
        return name.startswith(prefix)

    config.html_js_files = [entry for entry in config.html_js_files if not vendored(entry)]
    config.html_css_files = [entry for entry in config.html_css_files if not vendored(entry)]


def setup(app) -> dict[str, Any]:
    """Sphinx extension entry point (``sphinx: extra_extensions: [memories_lib.book]`` in _config.yml)."""
    app.connect("config-inited", _drop_vendored_scripts, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
