"""The reader's checks: every page of the built book opened in headless Chromium and read as a person would.

A page passes when, at a desktop window's width (1280 px):

- **width**: no element of the content column is wider than the column (code blocks excepted, they
  scroll by design), and the page does not scroll sideways;
- **cell**: no table cell reads ``nan``, ``NaN``, ``None``, ``True``, ``False`` (or ``<NA>``, ``NaT``, ``inf``), no
  number or interval is broken over lines, and no short cell is squeezed onto three or more;
- **figure**: every figure has a number and a caption and is shown at 70% of its drawn size or more
  (smaller, its text is too small to read), and every image of the content is in such a figure;
- **reference**: no MyST role is printed as text, no cross-reference or glue is left unresolved (on the
  page, and every ``{glue}`` key of a chapter's prose is glued by its executed notebook);
- **math**: MathJax typeset the mathematics, no raw ``$``, ``\\(`` or ``\\[`` in the prose;
- **profile**: a chapter, executed with one profile, says nothing about another one (such sentences
  come from the profile or from a glued value).

The checks themselves run in the page (``reader.js``): each page is copied beside itself with the
script added, opened with ``chromium --headless --dump-dom``, and the report the script writes into
the page is read back. ``check_book`` returns every problem; ``memories check-book`` prints them.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import nbformat

from ..core.profile import list_profiles
from .toc import EXECUTED_DIR, BookError, chapters

SCRIPT = Path(__file__).with_name("reader.js")
WINDOW = (1280, 1000)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep headless Chromium off this machine's closed network and fast to start.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                  "--proxy-server=127.0.0.1:9", "--virtual-time-budget=20000")
REPORT = re.compile(r'<pre id="memories-reader-report"[^>]*>(.*?)</pre>', re.S)
REDIRECT = re.compile(r'<meta http-equiv="refresh"', re.I)  # the root index.html only sends the reader on
BANNER = re.compile(r"Executed with the ([\w.-]+) profile")
GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")
GLUE_DIRECTIVE = re.compile(r"^\s*[`:]{3,}\{glue(?::\w+)?\}\s+([^\s:]+)", re.M)


@dataclass(frozen=True)
class Problem:
    """One defect a reader would see: the page (relative to the HTML folder), the check, what is wrong."""

    page: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.page}: [{self.check}] {self.message}"


def find_chromium() -> str:
    """The path of a Chromium-like browser, or a BookError saying how to install one."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise BookError("the reader's checks need headless Chromium, and none is installed "
                    "(Debian: apt-get install chromium)")


def book_pages(html_dir: Path) -> list[Path]:
    """The pages a reader opens: every HTML page of the book but Sphinx's search, index and redirect pages."""
    skip = {"search.html", "genindex.html", "py-modindex.html"}
    pages = (p for p in html_dir.rglob("*.html")
             if p.name not in skip and "_static" not in p.parts and "_sources" not in p.parts
             and not p.name.endswith(".reader.html"))
    return sorted(p for p in pages if not REDIRECT.search(p.read_text(encoding="utf-8")[:2000]))


def page_profile(page_html: str) -> str | None:
    """The profile a chapter page was executed with, from its banner (None on pages without one)."""
    found = BANNER.search(page_html)
    return found.group(1) if found else None


def read_page(page: Path, html_dir: Path, profiles: Sequence[str] = (), browser: str | None = None) -> list[Problem]:
    """Open ``page`` in headless Chromium and run the reader's checks in it."""
    browser = browser or find_chromium()
    page, html_dir = Path(page).resolve(), Path(html_dir).resolve()
    name = page.relative_to(html_dir).as_posix()
    source = page.read_text(encoding="utf-8")
    own = page_profile(source)
    others = [p for p in profiles if own is not None and p != own]
    script = SCRIPT.read_text(encoding="utf-8")
    tag = f"<script data-other-profiles='{json.dumps(others)}'>\n{script}\n</script>"
    if "</body>" not in source:
        return [Problem(name, "page", "not an HTML page with a body")]
    copy = page.with_name(page.stem + ".reader.html")  # beside the page: its relative links still work
    copy.write_text(source.replace("</body>", tag + "\n</body>", 1), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="memories-reader-") as profile_dir:
            done = subprocess.run(
                [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom", copy.as_uri()],
                capture_output=True, text=True, timeout=180)
    finally:
        copy.unlink(missing_ok=True)
    found = REPORT.search(done.stdout)
    if done.returncode != 0 or not found:
        return [Problem(name, "page", f"Chromium did not report on the page (exit {done.returncode}): "
                                      f"{done.stderr.strip()[-300:]}")]
    report = json.loads(html_lib.unescape(found.group(1)))
    return [Problem(name, p["check"], p["message"]) for p in report["problems"]]


def glued_keys(notebook: nbformat.NotebookNode) -> set[str]:
    """The keys an executed notebook glued (myst-nb's ``glue``)."""
    return {o.metadata["scrapbook"]["name"]
            for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if "scrapbook" in o.get("metadata", {})}


def referenced_glue_keys(notebook: nbformat.NotebookNode) -> set[str]:
    """The keys a notebook's prose pastes with ``{glue}`` roles and directives."""
    text = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    return set(GLUE_ROLE.findall(text)) | set(GLUE_DIRECTIVE.findall(text))


def glue_problems(root: Path) -> list[Problem]:
    """A chapter's ``{glue}`` keys that its executed notebook never glued (they render as nothing)."""
    problems = []
    for chapter in chapters(root):
        if not chapter.executed.is_file():
            continue
        nb = nbformat.read(chapter.executed, as_version=4)
        for key in sorted(referenced_glue_keys(nb) - glued_keys(nb)):
            problems.append(Problem(f"{EXECUTED_DIR}/{chapter.name}.html", "reference",
                                    f"the prose pastes the glue key {key!r}, which the notebook never glued"))
    return problems


def check_book(root: Path, html_dir: Path | None = None, pages: Iterable[Path] | None = None,
               workers: int = 2) -> list[Problem]:
    """Every problem the reader's checks find in the built book at ``html_dir`` (default ``root/_build/html``)."""
    html_dir = Path(html_dir or Path(root) / "_build" / "html")
    if not (html_dir / "index.html").is_file():
        raise BookError(f"no built book at {html_dir}: run `make book` (or `memories book`) first")
    browser = find_chromium()
    pages = list(pages) if pages is not None else book_pages(html_dir)
    profiles = list_profiles()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda page: read_page(page, html_dir, profiles, browser), pages)
        problems = [p for page_problems in found for p in page_problems]
    return problems + glue_problems(Path(root))
