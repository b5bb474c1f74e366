"""A slide deck built from the executed chapters: their figures and glued numbers, nothing typed.

A deck file (``slides/deck.md``; its syntax is documented at its top and in :func:`parse_deck`) lists
the slides: a title, short bullets, the name of a chapter's figure and speaker notes. Numbers in the
text are references to values a chapter glued (``{glue:04_concept_memory/min_psnr:.1f}``), read from
the executed notebook ``_executed/NAME.ipynb`` the book renders; a figure is the image output of the
cell whose ``mystnb.figure.name`` it names. The title slide carries the profile, the machine and the
dates of the runs, read from the executed notebooks' papermill metadata and the execution log.

The deck is one self-contained HTML file: images as base64 data URIs, inline CSS and a few lines of
inline JavaScript (arrows, space and page keys move; ``n`` shows the speaker notes; ``#N`` in the
address opens slide N; bullets too long for their slide are set smaller), no network, so it opens from ``file://``. Printing it gives one slide per page.
"""

from __future__ import annotations

import ast
import datetime
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from ..core.progress import note
from . import statistics
from .toc import EXECUTED_DIR, SOURCE_DIR, BookError

DECK_PATH = Path("slides") / "deck.md"
OUTPUT_PATH = Path("_build") / "slides" / "index.html"

#: ``{glue:CHAPTER/KEY}`` or ``{glue:CHAPTER/KEY:FORMAT}`` (FORMAT: a Python format spec, as ``.1f``).
GLUE_REF = re.compile(r"\{glue:(?P<chapter>[\w-]+)/(?P<key>[\w-]+)(?::(?P<spec>[^{}]*))?\}")
LAYOUTS = ("content", "title")
#: The title of the banner that opens every executed chapter (``banner.banner_markdown``).
BANNER = re.compile(r"\{admonition\} Executed with the (\S+) profile")


class SlidesError(BookError):
    """A deck that does not parse, or a figure or glued value it names that the chapters lack."""


@dataclass(frozen=True)
class FigureRef:
    """A chapter's figure, by the ``name`` of its ``mystnb.figure`` cell metadata."""

    chapter: str
    name: str


@dataclass(frozen=True)
class Slide:
    """One slide of the deck file; ``line`` is where it starts (for error messages)."""

    title: str
    bullets: tuple[str, ...] = ()
    figure: FigureRef | None = None
    notes: str = ""
    layout: str = "content"
    line: int = 1

    def references(self) -> list[tuple[str, str]]:
        """The (chapter, key) of every glue reference in the title, bullets and notes."""
        texts = [self.title, *self.bullets, self.notes]
        return [(m["chapter"], m["key"]) for text in texts for m in GLUE_REF.finditer(text)]

    def chapters(self) -> list[str]:
        """Every chapter the slide reads, in order of first use."""
        named = [c for c, _ in self.references()] + ([self.figure.chapter] if self.figure else [])
        return list(dict.fromkeys(named))


@dataclass(frozen=True)
class Figure:
    """A figure's image (base64 as the notebook stores it) and its caption."""

    mime: str
    data: str
    caption: str


@dataclass(frozen=True)
class RunInfo:
    """What produced the executed chapters: profile(s), machine(s), dates, whether numbers mean anything."""

    profiles: dict[str, list[str]] = field(default_factory=dict)  # profile -> chapters
    machines: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)  # ISO dates (YYYY-MM-DD), sorted
    interpret: bool = True

    def line(self) -> str:
        """One line for the title slide."""
        if len(self.profiles) == 1:
            profiles = f"the {next(iter(self.profiles))} profile"
        else:
            profiles = "the profiles " + "; ".join(f"{p} ({', '.join(c)})" for p, c in self.profiles.items())
        machines = " and ".join(self.machines) or "a machine the execution log does not record"
        when = self.dates[0] if len(set(self.dates)) == 1 else f"{self.dates[0]} to {self.dates[-1]}"
        return f"Executed with {profiles} on {machines}, {when}"


# ---------------------------------------------------------------------------------------------- the deck file

def parse_deck(text: str, source: str = "deck") -> list[Slide]:
    """The slides of a deck file.

    Slides are separated by a line ``---``. In a slide, in this order: ``# Title``; optional
    ``layout: title`` and ``figure: CHAPTER/fig-name`` lines; bullets (``- text``; a line indented by
    two spaces continues the bullet above); then ``Notes:`` and the speaker notes (free text to the end
    of the slide). Blank lines and HTML comments (``<!-- ... -->``) are ignored outside the notes.
    """
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    blocks: list[tuple[int, list[str]]] = [(1, [])]
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == "---":
            blocks.append((number + 1, []))
        else:
            blocks[-1][1].append(line)
    slides = []
    for start, lines in blocks:
        if any(line.strip() for line in lines):
            slides.append(_parse_slide(lines, start, source))
    if not slides:
        raise SlidesError(f"{source}: no slides (slides are separated by lines '---')")
    return slides


def _parse_slide(lines: list[str], start: int, source: str) -> Slide:
    title, layout, figure = None, "content", None
    bullets: list[str] = []
    notes: list[str] | None = None
    for offset, line in enumerate(lines):
        where = f"{source}, line {start + offset}"
        stripped = line.strip()
        if notes is not None:
            notes.append(line)
        elif not stripped:
            continue
        elif stripped.startswith("# ") and title is None:
            title = stripped[2:].strip()
        elif title is None:
            raise SlidesError(f"{where}: a slide starts with its title, '# Title'; got {stripped!r}")
        elif stripped.startswith("layout:"):
            layout = stripped.split(":", 1)[1].strip()
            if layout not in LAYOUTS:
                raise SlidesError(f"{where}: unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
        elif stripped.startswith("figure:"):
            chapter, _, name = stripped.split(":", 1)[1].strip().partition("/")
            if not chapter or not name:
                raise SlidesError(f"{where}: a figure is written 'figure: CHAPTER/fig-name', got {stripped!r}")
            figure = FigureRef(chapter, name)
        elif stripped.startswith("- "):
            bullets.append(stripped[2:].strip())
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + stripped
        elif stripped == "Notes:":
            notes = []
        else:
            raise SlidesError(f"{where}: expected '- bullet', 'figure:', 'layout:' or 'Notes:', got {stripped!r}")
    if title is None:
        raise SlidesError(f"{source}, line {start}: a slide without a title")
    for text in (title, *bullets):
        _check_references(text, f"{source}, slide '{title}'")
    notes_text = "\n".join(notes or []).strip()
    _check_references(notes_text, f"{source}, notes of slide '{title}'")
    return Slide(title, tuple(bullets), figure, notes_text, layout, start)


def _check_references(text: str, where: str) -> None:
    """A ``{glue:`` that the reference pattern does not read is a typo, not text."""
    leftover = GLUE_REF.sub("", text)
    if "{glue:" in leftover:
        bad = leftover[leftover.index("{glue:"):][:60]
        raise SlidesError(f"{where}: cannot read the glue reference {bad!r}; write {{glue:CHAPTER/KEY}} "
                          "or {glue:CHAPTER/KEY:FORMAT}")


# ------------------------------------------------------------------------------------- the executed chapters

class ExecutedBook:
    """The executed chapters under ``<root>/_executed``: their glued values, figures and runs."""

    def __init__(self, root: str | Path, executed_dir: str | Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.executed_dir = Path(executed_dir) if executed_dir else self.root / EXECUTED_DIR
        self._notebooks: dict[str, nbformat.NotebookNode] = {}

    def notebook(self, chapter: str) -> nbformat.NotebookNode:
        """The executed notebook of ``chapter`` (a SlidesError saying what to run when it is absent)."""
        if chapter not in self._notebooks:
            path = self.executed_dir / f"{chapter}.ipynb"
            if not path.is_file():
                sources = self.root / SOURCE_DIR
                known = sorted(p.stem for p in sources.glob("*.md")) if sources.is_dir() else []
                if known and chapter not in known:
                    raise SlidesError(f"the deck names the chapter {chapter!r}, which the book does not have; "
                                      f"chapters: {', '.join(known)}")
                raise SlidesError(f"chapter {chapter} has not been executed (no {path}): run `make book` first "
                                  f"(or `memories run {chapter}`)")
            self._notebooks[chapter] = nbformat.read(path, as_version=4)
        return self._notebooks[chapter]

    def placeholder(self, chapter: str) -> str | None:
        """The world a chapter was not executed in (its executed copy is a placeholder page), else None."""
        meta = self.notebook(chapter).metadata.get("memories", {})
        return str(meta.get("world", "this world")) if meta.get("placeholder") else None

    def require(self, chapters: list[str]) -> None:
        """A SlidesError naming every chapter of ``chapters`` that has not been executed (one at a time is slow)."""
        missing = sorted(c for c in chapters if not (self.executed_dir / f"{c}.ipynb").is_file())
        if len(missing) > 1:
            raise SlidesError(f"chapters {', '.join(missing)} have not been executed (no .ipynb in "
                              f"{self.executed_dir}): run `make book` first")
        for chapter in missing:
            self.notebook(chapter)  # one chapter: its own message (not executed, or no such chapter)

    def glued(self, chapter: str) -> dict[str, Any]:
        """Every value ``chapter`` glued, by name: numbers and strings as Python values, else their text."""
        values: dict[str, Any] = {}
        for cell in self.notebook(chapter).cells:
            for output in cell.get("outputs", []):
                record = output.get("metadata", {}).get("scrapbook")
                if record:
                    values[record["name"]] = _glued_value(output.get("data", {}), record.get("mime_prefix", ""))
        return values

    def glue(self, chapter: str, key: str) -> Any:
        """The value ``chapter`` glued as ``key``."""
        values = self.glued(chapter)
        if key not in values:
            raise SlidesError(f"chapter {chapter} glued no value named {key!r}; it glues: "
                              f"{', '.join(sorted(values)) or 'nothing'}")
        return values[key]

    def figures(self, chapter: str) -> dict[str, Figure | None]:
        """Every named figure of ``chapter``: its image, or None when its cell has no image output."""
        found: dict[str, Figure | None] = {}
        for cell in self.notebook(chapter).cells:
            spec = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
            if cell.cell_type != "code" or not spec.get("name"):
                continue
            images = [(mime, out["data"][mime]) for out in cell.get("outputs", [])
                      for mime in ("image/png", "image/jpeg") if mime in out.get("data", {})]
            if images:
                mime, data = images[-1]
                found[spec["name"]] = Figure(mime, "".join(data.split()), str(spec.get("caption", "")).strip())
            else:
                found[spec["name"]] = None
        return found

    def figure(self, ref: FigureRef) -> Figure:
        """The image of a chapter's figure."""
        figures = self.figures(ref.chapter)
        if ref.name not in figures:
            raise SlidesError(f"chapter {ref.chapter} has no figure named {ref.name!r}; its figures: "
                              f"{', '.join(figures) or 'none'}")
        figure = figures[ref.name]
        if figure is None:
            raise SlidesError(f"the figure {ref.name!r} of chapter {ref.chapter} has no image output: "
                              "did its cell fail? Run `make book` again")
        return figure

    def run_info(self, chapters: list[str]) -> RunInfo:
        """Profiles (papermill's parameters), dates (papermill's end time) and machines (the log) of ``chapters``."""
        profiles: dict[str, list[str]] = {}
        dates, machines, interpret = [], [], True
        log = statistics.read_log(self.executed_dir / statistics.LOG_NAME)
        for chapter in chapters:
            papermill = self.notebook(chapter).metadata.get("papermill", {})
            banner = self.banner(chapter)
            named = BANNER.search(banner)
            # the banner names the profile; papermill's parameter may be a YAML file's path
            given = str(papermill.get("parameters", {}).get("profile") or "unknown")
            profile = named[1] if named else (Path(given).stem if given.endswith((".yaml", ".yml")) else given)
            profiles.setdefault(profile, []).append(chapter)
            end = papermill.get("end_time") or papermill.get("start_time")
            if end:
                dates.append(str(end)[:10])
            runs = [r for r in log if r.chapter == chapter and r.profile == profile]
            if runs and (described := describe_machine(runs[-1].machine)) not in machines:
                machines.append(described)
            interpret = interpret and "not to be interpreted" not in banner
        return RunInfo(profiles, machines, sorted(dates) or ["on an unrecorded date"], interpret)

    def banner(self, chapter: str) -> str:
        """The text of the banner that opens the executed chapter (``show_banner``); "" when it has none."""
        for cell in self.notebook(chapter).cells:
            for output in cell.get("outputs", []):
                text = output.get("data", {}).get("text/markdown", "")
                text = "".join(text) if isinstance(text, list) else str(text)
                if BANNER.search(text):
                    return text
        return ""


def _glued_value(data: dict[str, Any], prefix: str) -> Any:
    """A glued output's value: its Markdown text, else its ``text/plain`` read as a Python literal (or as text)."""
    for mime in ("text/markdown", "text/plain"):
        text = data.get(prefix + mime)
        if text is None:
            continue
        text = "".join(text) if isinstance(text, list) else str(text)
        if mime == "text/plain":
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                if text in ("nan", "inf", "-inf"):
                    return float(text)
        return text
    return None


def describe_machine(machine: dict[str, Any]) -> str:
    """A machine of the execution log in words: system and processor, cores, GPU."""
    system = str(machine.get("platform") or "").split("-")[0]
    cores = machine.get("cpu_count")
    return ", ".join([" ".join(filter(None, [system, str(machine.get("processor") or "")])) or "an unnamed machine",
                      f"{cores} CPU cores" if cores else "an unknown number of cores",
                      str(machine.get("gpu") or "no GPU")])


def format_value(value: Any, spec: str | None) -> str:
    """A glued value as the slide shows it: with ``spec`` when given; a number without one as ``g``; NaN as n/a."""
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if spec:
            try:
                return format(value, spec)
            except (TypeError, ValueError) as err:
                raise SlidesError(f"cannot format {value!r} with {spec!r}: {err}") from None
        return str(value)
    try:
        return format(value, spec) if spec else (str(value) if isinstance(value, int) else format(value, "g"))
    except ValueError as err:
        raise SlidesError(f"cannot format {value!r} with {spec!r}: {err}") from None


# ------------------------------------------------------------------------------------------------- rendering

def _inline(text: str, book: ExecutedBook, where: str) -> str:
    """Escaped HTML of a line: glue references filled in, ``**bold**``, ``*em*`` and ```code``` marked up."""
    def fill(match: re.Match[str]) -> str:
        try:
            return format_value(book.glue(match["chapter"], match["key"]), match["spec"])
        except SlidesError as err:
            raise SlidesError(f"{where}: {err}") from None

    out = html.escape(GLUE_REF.sub(fill, text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", out)


def _render_slide(slide: Slide, number: int, total: int, book: ExecutedBook, run: RunInfo) -> str:
    where = f"slide {number} ({slide.title!r})"
    parts = [f'<section class="slide {slide.layout}" id="slide-{number}" data-number="{number}">',
             f"<h1>{_inline(slide.title, book, where)}</h1>"]
    body = []
    if slide.bullets:
        items = "".join(f"<li>{_inline(b, book, where)}</li>" for b in slide.bullets)
        body.append(f'<ul class="bullets">{items}</ul>')
    if slide.figure is not None:
        try:
            figure = book.figure(slide.figure)
        except SlidesError as err:
            raise SlidesError(f"{where}: {err}") from None
        caption = html.escape(figure.caption, quote=False)
        source = html.escape(f"{slide.figure.chapter}, {slide.figure.name}")
        body.append(f'<figure><div class="frame"><img src="data:{figure.mime};base64,{figure.data}" '
                    f'alt="{source}"></div><figcaption title="{html.escape(figure.caption)}">{caption} '
                    f'<span class="source">({source})</span></figcaption></figure>')
    if slide.layout == "title":
        run_html = html.escape(run.line(), quote=False)
        body.append(f'<p class="run">{run_html}</p>')
        if not run.interpret:
            body.append('<p class="warning">The profile of these runs only shows that the code runs: '
                        "its numbers are not to be interpreted.</p>")
    kind = "both" if slide.bullets and slide.figure else "single"
    parts.append(f'<div class="body {kind}">{"".join(body)}</div>')
    notes = "".join(f"<p>{_inline(p, book, where)}</p>" for p in re.split(r"\n\s*\n", slide.notes) if p.strip())
    parts.append(f'<aside class="notes"><h2>Notes</h2>{notes or "<p>(no notes)</p>"}</aside>')
    parts.append(f'<footer>{number} / {total}</footer></section>')
    return "\n".join(parts)


CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; background: #222; font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; }
body { --w: min(100vw, calc(100vh * 16 / 9)); --u: calc(var(--w) / 100); display: flex;
       align-items: center; justify-content: center; overflow: hidden; }
.slide { display: none; position: relative; width: var(--w); height: calc(var(--w) * 9 / 16); background: #fff;
         color: #1d1d1d; padding: calc(3 * var(--u)) calc(4 * var(--u)); flex-direction: column;
         font-size: calc(2.1 * var(--u)); line-height: 1.35; overflow: hidden; }
.slide.current { display: flex; }
h1 { font-size: calc(3.1 * var(--u)); margin: 0 0 calc(1.6 * var(--u)); color: #17365d;
     border-bottom: calc(0.25 * var(--u)) solid #c9d6e8; padding-bottom: calc(0.6 * var(--u)); }
.body { flex: 1; min-height: 0; display: flex; flex-direction: column; gap: calc(1.5 * var(--u)); }
.body.both { display: grid; grid-template-columns: 40% 1fr; grid-template-rows: minmax(0, 1fr); }
ul.bullets { margin: 0; padding-left: calc(2.4 * var(--u)); font-size: calc(var(--fit, 1) * 1em); }
ul.bullets li { margin-bottom: calc(0.9 * var(--u)); }
figure { margin: 0; flex: 1; min-height: 0; min-width: 0; display: flex; flex-direction: column; }
.frame { flex: 1; min-height: 0; display: flex; align-items: center; justify-content: center; }
.frame img { max-width: 100%; max-height: 100%; object-fit: contain; }
figcaption { font-size: calc(1.25 * var(--u)); color: #555; margin-top: calc(0.5 * var(--u));
             display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
.source { color: #888; }
code { font-size: 90%; background: #eef1f5; padding: 0 0.2em; border-radius: 0.2em; }
.slide.title { justify-content: center; text-align: center; }
.slide.title h1 { font-size: calc(4.4 * var(--u)); border: none; margin-bottom: calc(0.5 * var(--u)); }
.slide.title .body { flex: none; align-items: center; gap: calc(1 * var(--u)); }
.slide.title ul.bullets { list-style: none; padding: 0; }
.run { color: #17365d; font-size: calc(1.7 * var(--u)); margin: 0; }
.warning { color: #a33; font-size: calc(1.6 * var(--u)); margin: 0; }
.notes { display: none; position: absolute; left: 0; right: 0; bottom: 0; max-height: 45%; overflow: auto;
         background: rgba(20, 30, 45, 0.93); color: #f2f2f2; font-size: calc(1.6 * var(--u));
         padding: calc(1 * var(--u)) calc(4 * var(--u)); }
.notes h2 { font-size: calc(1.4 * var(--u)); margin: 0; color: #9cc3f0; }
.notes p { margin: calc(0.5 * var(--u)) 0; }
body.show-notes .notes { display: block; }
footer { position: absolute; right: calc(2 * var(--u)); bottom: calc(1 * var(--u)); font-size: calc(1.2 * var(--u));
         color: #999; }
@media print {
  @page { size: 16in 9in; margin: 0; }
  html, body { background: #fff; height: auto; overflow: visible; display: block; }
  body { --w: 16in; --u: 0.16in; }
  .slide, .slide.current { display: flex; break-after: page; page-break-after: always; }
  .notes, body.show-notes .notes { display: none; }
}
"""

JS = """
const slides = Array.from(document.querySelectorAll(".slide"));
let current = 0;
function show(n) {
  current = Math.max(0, Math.min(slides.length - 1, n));
  slides.forEach((s, k) => s.classList.toggle("current", k === current));
  try { history.replaceState(null, "", "#" + (current + 1)); } catch (e) {}
}
function overflows(slide) {
  const body = slide.querySelector(".body"), bottom = body.getBoundingClientRect().bottom + 1;
  return Array.from(body.children).some((c) => c.scrollHeight > c.clientHeight + 1 || c.getBoundingClientRect().bottom > bottom);
}
function fit(slide) {  // bullets that do not fit the slide are set smaller, down to 60%
  slide.classList.add("current");
  for (let f = 0.95; f >= 0.6 && overflows(slide); f -= 0.05) slide.style.setProperty("--fit", f.toFixed(2));
  slide.classList.remove("current");
}
slides.forEach(fit);
function fromHash() { const n = parseInt(location.hash.slice(1), 10); show(isNaN(n) ? 0 : n - 1); }
window.addEventListener("hashchange", fromHash);
window.addEventListener("keydown", (e) => {
  const next = ["ArrowRight", "ArrowDown", "PageDown", " "], back = ["ArrowLeft", "ArrowUp", "PageUp"];
  if (next.includes(e.key)) show(current + 1);
  else if (back.includes(e.key)) show(current - 1);
  else if (e.key === "Home") show(0);
  else if (e.key === "End") show(slides.length - 1);
  else if (e.key === "n") document.body.classList.toggle("show-notes");
  else return;
  e.preventDefault();
});
fromHash();
"""


def applicable(slides: list[Slide], book: ExecutedBook) -> tuple[list[Slide], list[str]]:
    """The slides whose chapters were executed in this book's world, and a line for each one left out.

    A chapter that does not run in the profile's world (the shapes world's own chapters, in a Stable
    Diffusion book) is a placeholder page with nothing to show, so its slides are left out.
    """
    book.require(list(dict.fromkeys(c for s in slides for c in s.chapters())))
    kept, left_out = [], []
    for number, slide in enumerate(slides, start=1):
        elsewhere = [c for c in slide.chapters() if book.placeholder(c)]
        if elsewhere:
            left_out.append(f"slide {number} ({slide.title!r}) is left out: chapter {elsewhere[0]} was not executed "
                            f"in this book's {book.placeholder(elsewhere[0])} world")
        else:
            kept.append(slide)
    if not kept or kept[0] is not slides[0]:
        raise SlidesError("the deck's first slide reads a chapter this book's world does not execute: "
                          + "; ".join(left_out))
    return kept, left_out


def render_deck(slides: list[Slide], book: ExecutedBook, title: str | None = None) -> str:
    """The deck as one self-contained HTML page."""
    used = list(dict.fromkeys(c for s in slides for c in s.chapters()))
    if not used:
        raise SlidesError("the deck uses no chapter: it names no figure and no glued value")
    book.require(used)
    run = book.run_info(used)
    sections = [_render_slide(s, i, len(slides), book, run) for i, s in enumerate(slides, start=1)]
    sections[0] = sections[0].replace('class="slide ', 'class="slide current ', 1)
    page_title = html.escape(title or re.sub(r"\{glue:[^}]*\}", "", slides[0].title))
    built = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{page_title}</title>\n'
            f'<meta name="generator" content="memories slides, {built}">\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(sections)
            + f"\n<script>{JS}</script>\n</body>\n</html>\n")


def build_slides(root: str | Path, deck: str | Path | None = None, output: str | Path | None = None) -> Path:
    """Read the deck file (default ``<root>/slides/deck.md``), render it from ``<root>/_executed``, write the HTML.

    Returns the written file (default ``<root>/_build/slides/index.html``).
    """
    root = Path(root).resolve()
    deck_path = Path(deck) if deck else root / DECK_PATH
    if not deck_path.is_file():
        raise SlidesError(f"no deck file at {deck_path}")
    slides = parse_deck(deck_path.read_text(encoding="utf-8"), source=str(deck_path))
    book = ExecutedBook(root)
    slides, left_out = applicable(slides, book)
    for line in left_out:
        note(line)
    page = render_deck(slides, book)
    out = Path(output) if output else root / OUTPUT_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(path: Path) -> int:
    """How many pages a PDF written by Chromium has (its uncompressed page objects)."""
    return len(PDF_PAGE.findall(Path(path).read_bytes()))


def export_pdf(deck: str | Path, pdf: str | Path | None = None, browser: str | None = None) -> Path:
    """Print the HTML ``deck`` to a PDF with headless Chromium (one 16:9 slide per page, the deck's print style).

    ``pdf`` defaults to the deck's path with ``.pdf``; a BookError says how to install Chromium when there is
    none, and a SlidesError when the PDF does not have one page per slide.
    """
    import subprocess
    import tempfile

    from .reader import CHROMIUM_FLAGS, find_chromium

    deck = Path(deck).resolve()
    out = Path(pdf) if pdf else deck.with_suffix(".pdf")
    browser = browser or find_chromium()
    with tempfile.TemporaryDirectory(prefix="memories-slides-") as profile_dir:
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--no-pdf-header-footer",
                               f"--print-to-pdf={out.resolve()}", deck.as_uri()],
                              capture_output=True, text=True, timeout=300)
    slides = deck.read_text(encoding="utf-8").count("<section class=")
    if done.returncode != 0 or not out.is_file():
        raise SlidesError(f"Chromium did not print {deck} to {out} (exit {done.returncode}): {done.stderr[-300:]}")
    if pdf_pages(out) != slides:
        raise SlidesError(f"{out} has {pdf_pages(out)} pages for {slides} slides: the print style did not hold")
    return out


def deck_summary(path: Path) -> str:
    """A one-line summary of a written deck: its slides and size."""
    text = path.read_text(encoding="utf-8")
    return f"{text.count('<section class=')} slides, {len(text.encode()) / 1e6:.1f} MB"


__all__ = ["DECK_PATH", "OUTPUT_PATH", "GLUE_REF", "ExecutedBook", "Figure", "FigureRef", "RunInfo", "Slide",
           "SlidesError", "build_slides", "deck_summary", "describe_machine", "export_pdf", "format_value",
           "parse_deck", "pdf_pages", "render_deck"]
