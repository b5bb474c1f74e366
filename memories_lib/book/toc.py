"""The book's chapters: the root holding ``_toc.yml``, the executed chapters it lists, their sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

EXECUTED_DIR = "_executed"
SOURCE_DIR = "notebooks"


class BookError(RuntimeError):
    """A chapter that failed to execute or a book that failed to build."""


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


def front_matter(source: Path) -> dict[str, Any]:
    """The YAML front matter of a MyST notebook (``---`` ... ``---`` at its top); {} when it has none."""
    text = Path(source).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[4:end])
    except yaml.YAMLError as err:
        raise BookError(f"{source}: its front matter is not valid YAML: {err}") from None
    return data if isinstance(data, dict) else {}


def chapter_worlds(source: Path) -> tuple[str, ...] | None:
    """The world kinds a chapter runs in (front matter ``memories: {worlds: [shapes]}``); None: every world."""
    worlds = (front_matter(source).get("memories") or {}).get("worlds")
    if worlds is None:
        return None
    if isinstance(worlds, str):
        worlds = [worlds]
    if not isinstance(worlds, list) or not worlds or not all(isinstance(w, str) for w in worlds):
        raise BookError(f"{source}: memories.worlds must be a list of world kinds, got {worlds!r}")
    return tuple(worlds)


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


def read_notebook(source: Path):
    """The jupytext MyST notebook at ``source`` as an nbformat notebook (a BookError when it does not read)."""
    import jupytext

    try:
        return jupytext.read(source)
    except Exception as err:  # jupytext raises several types for a malformed file
        raise BookError(f"cannot read the notebook {source}: {err}") from err
