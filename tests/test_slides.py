"""The slide deck: deck file parser, glued numbers and figures read from executed notebooks, the HTML, the CLI.

The executed notebooks are made by hand with nbformat in the layout papermill and myst-nb write
(glued values as outputs with ``metadata.scrapbook``, figures as cells with ``mystnb.figure``), so
nothing executes a model. The last test checks the shipped deck against the chapters' sources.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest

from memories_lib.book import BookError, reader
from memories_lib.book.slides import (
    ExecutedBook,
    FigureRef,
    SlidesError,
    build_slides,
    export_pdf,
    format_value,
    parse_deck,
    pdf_pages,
)
from memories_lib.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "04_concept_memory"
# A 1x1 PNG: what matters is that its bytes reach the deck unchanged.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f5a0e10000000049454e44ae426082")).decode()
PREFIX = "application/papermill.record/"


def glue_output(name: str, value: object) -> nbformat.NotebookNode:
    """A glued value as myst-nb's ``glue(name, value, display=False)`` writes it."""
    return nbformat.v4.new_output("display_data", data={PREFIX + "text/plain": repr(value)},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": PREFIX}})


def write_chapter(root: Path, name: str = CHAPTER, profile: str = "mini", glued: dict | None = None,
                  figure: str = "fig-distances", with_image: bool = True) -> Path:
    """An executed chapter ``root/_executed/NAME.ipynb`` (and its source): a banner, glued values, a figure."""
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "notebooks" / f"{name}.md").write_text("# a chapter\n")
    banner = nbformat.v4.new_code_cell("show_banner(profile)", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/markdown": f"```{{admonition}} Executed with the {profile} profile\n```",
                              "text/plain": "<IPython.core.display.Markdown object>"})])
    glue_cell = nbformat.v4.new_code_cell("glue(...)", outputs=[
        glue_output(k, v) for k, v in (glued if glued is not None else {"min_psnr": 23.456, "num_images": 8}).items()])
    image = [nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]
    figure_cell = nbformat.v4.new_code_cell("plt.show()", outputs=image if with_image else [])
    figure_cell.metadata["mystnb"] = {"figure": {"name": figure, "caption": "Distances of E against R."}}
    nb = nbformat.v4.new_notebook(cells=[banner, glue_cell, figure_cell])
    nb.metadata["papermill"] = {"parameters": {"profile": profile}, "end_time": "2026-11-27T06:44:42+00:00"}
    path = root / "_executed" / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    log = {"chapter": name, "profile": profile, "seconds": 1.0, "date": "2026-11-27T06:44:42+00:00",
           "cache": "warm", "cache_files_added": 0,
           "machine": {"platform": "Linux-x86_64", "processor": "x86_64", "cpu_count": 2, "gpu": None}}
    with (root / "_executed" / "execution_log.jsonl").open("a") as handle:
        handle.write(json.dumps(log) + "\n")
    return path


DECK = """<!-- a comment with {glue:nothing/here} in it -->
# The paper
layout: title
- a reproduction

---

# Concept memory
figure: 04_concept_memory/fig-distances
- PSNR {glue:04_concept_memory/min_psnr:.1f} dB over
  {glue:04_concept_memory/num_images} images
- **bold** and *italic*

Notes:
Say that the PSNR is {glue:04_concept_memory/min_psnr:.2f} dB.

Second paragraph.
"""


def write_deck(root: Path, text: str = DECK) -> Path:
    path = root / "slides" / "deck.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parse_deck_reads_titles_layouts_figures_bullets_and_notes() -> None:
    slides = parse_deck(DECK)
    assert [s.title for s in slides] == ["The paper", "Concept memory"]
    assert slides[0].layout == "title" and slides[1].layout == "content"
    assert slides[1].figure == FigureRef(CHAPTER, "fig-distances")
    assert slides[1].bullets[0] == ("PSNR {glue:04_concept_memory/min_psnr:.1f} dB over "
                                    "{glue:04_concept_memory/num_images} images")
    assert slides[1].notes.startswith("Say that") and "Second paragraph." in slides[1].notes
    assert slides[1].references() == [(CHAPTER, "min_psnr"), (CHAPTER, "num_images"), (CHAPTER, "min_psnr")]


@pytest.mark.parametrize("text, message", [
    ("- a bullet before any title\n", "starts with its title"),
    ("# T\nlayout: poster\n", "unknown layout 'poster'"),
    ("# T\nfigure: fig-distances\n", "CHAPTER/fig-name"),
    ("# T\nsome loose text\n", "expected '- bullet'"),
    ("# T\n- {glue:04_concept_memory min_psnr}\n", "cannot read the glue reference"),
    ("<!-- only a comment -->\n", "no slides"),
])
def test_parse_deck_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(SlidesError, match=re.escape(message)):
        parse_deck(text, source="deck.md")


def test_format_value() -> None:
    assert format_value(23.456, ".1f") == "23.5"
    assert format_value(8, None) == "8"
    assert format_value(0.123456789, None) == "0.123457"
    assert format_value(float("nan"), ".2f") == "n/a"
    assert format_value("ReNoise", None) == "ReNoise"
    with pytest.raises(SlidesError, match="cannot format"):
        format_value("ReNoise", ".2f")


def test_glued_numbers_are_formatted_and_the_figure_embedded(tmp_path: Path) -> None:
    write_chapter(tmp_path)
    out = build_slides(tmp_path, write_deck(tmp_path))
    assert out == tmp_path / "_build" / "slides" / "index.html"
    page = out.read_text()
    assert "PSNR 23.5 dB over 8 images" in page
    assert "Say that the PSNR is 23.46 dB." in page
    assert f"data:image/png;base64,{PNG}" in page
    assert "Distances of E against R." in page  # the figure's caption
    assert "<strong>bold</strong> and <em>italic</em>" in page
    assert "{glue:" not in page and "http" not in page.replace("http-equiv", "")  # nothing left, nothing fetched
    assert page.count('<section class="slide') == 2 and page.count('class="slide current') == 1


def test_the_title_slide_carries_profile_machine_and_date(tmp_path: Path) -> None:
    write_chapter(tmp_path, profile="tiny")
    page = build_slides(tmp_path, write_deck(tmp_path)).read_text()
    title = page[page.index('id="slide-1"'):page.index('id="slide-2"')]
    assert "Executed with the tiny profile on Linux x86_64, 2 CPU cores, no GPU, 2026-11-27" in title


def test_the_title_slide_lists_every_profile_of_a_mixed_book(tmp_path: Path) -> None:
    write_chapter(tmp_path, profile="mini")
    write_chapter(tmp_path, name="07_limitations", profile="tiny", glued={"n_finest": 4.0})
    deck = DECK + "\n---\n\n# Limits\n- {glue:07_limitations/n_finest:.0f} patches\n"
    page = build_slides(tmp_path, write_deck(tmp_path, deck)).read_text()
    assert "the profiles mini (04_concept_memory); tiny (07_limitations)" in page
    assert "4 patches" in page


def test_a_missing_glue_key_is_named_with_the_keys_that_exist(tmp_path: Path) -> None:
    write_chapter(tmp_path)
    deck = write_deck(tmp_path, "# T\n- {glue:04_concept_memory/psnr_median:.1f}\n")
    with pytest.raises(SlidesError, match=r"chapter 04_concept_memory glued no value named 'psnr_median'; "
                                          r"it glues: min_psnr, num_images"):
        build_slides(tmp_path, deck)


def test_a_missing_figure_is_named_with_the_figures_that_exist(tmp_path: Path) -> None:
    write_chapter(tmp_path)
    deck = write_deck(tmp_path, "# T\nfigure: 04_concept_memory/fig-triplets\n")
    with pytest.raises(SlidesError, match=r"no figure named 'fig-triplets'; its figures: fig-distances"):
        build_slides(tmp_path, deck)


def test_a_figure_without_an_image_says_so(tmp_path: Path) -> None:
    write_chapter(tmp_path, with_image=False)
    with pytest.raises(SlidesError, match="has no image output"):
        ExecutedBook(tmp_path).figure(FigureRef(CHAPTER, "fig-distances"))


def test_an_unexecuted_chapter_says_to_run_make_book(tmp_path: Path) -> None:
    write_chapter(tmp_path)
    (tmp_path / "notebooks" / "05_many_memories.md").write_text("# another chapter\n")
    book = ExecutedBook(tmp_path)
    with pytest.raises(SlidesError, match=r"chapter 05_many_memories has not been executed .*run `make book` first"):
        book.glue("05_many_memories", "n_held")
    with pytest.raises(SlidesError, match=r"does not have; chapters: 04_concept_memory, 05_many_memories"):
        book.glue("99_nothing", "n_held")
    with pytest.raises(SlidesError, match=r"chapters 05_many_memories, 06_geometry have not been executed"):
        book.require([CHAPTER, "05_many_memories", "06_geometry"])


def test_the_cli_writes_the_deck_and_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_deck(tmp_path)
    assert main(["slides", "--root", str(tmp_path)]) == 1
    assert "has not been executed" in capsys.readouterr().err
    write_chapter(tmp_path)
    out = tmp_path / "deck.html"
    assert main(["slides", "--root", str(tmp_path), "-o", str(out)]) == 0
    assert "2 slides" in capsys.readouterr().out and out.is_file()


def test_the_deck_opens_the_slide_its_address_names_in_chromium(tmp_path: Path) -> None:
    try:
        browser = reader.find_chromium()
    except BookError as err:
        pytest.skip(str(err))
    write_chapter(tmp_path)
    out = build_slides(tmp_path, write_deck(tmp_path))
    with tempfile.TemporaryDirectory(prefix="memories-slides-") as profile_dir:
        done = subprocess.run([browser, *reader.CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
                               "--window-size=1280,720", "--dump-dom", out.as_uri() + "#2"],
                              capture_output=True, text=True, timeout=120)
    current = re.findall(r'<section class="([^"]*)" id="slide-(\d)"', done.stdout)
    assert current == [("slide title", "1"), ("slide content current", "2")], done.stderr[-300:]


# ------------------------------------------------------------------------- the shipped deck against the chapters

CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.M | re.S)


def declared(source: Path) -> tuple[set[str], set[str]]:
    """The glue keys and figure names a chapter's source declares.

    A glue key is declared by ``glue("key"``, or as a string literal in a code cell that calls
    ``glue(`` (the chapters glue lists and dicts of names in a loop); a figure by ``name: fig-...``.
    """
    text = source.read_text()
    keys = set(re.findall(r'glue\(\s*"([\w-]+)"', text))
    for cell in CODE_CELL.findall(text):
        if "glue(" in cell:
            keys |= set(re.findall(r'"([A-Za-z_]\w*)"', cell))
    return keys, set(re.findall(r"name:\s*(fig-[\w-]+)", text))


def test_the_shipped_deck_names_only_what_the_chapters_declare() -> None:
    slides = parse_deck((ROOT / "slides" / "deck.md").read_text(), source="slides/deck.md")
    chapters = {p.stem: declared(p) for p in (ROOT / "notebooks").glob("*.md")}
    problems = []
    for slide in slides:
        for chapter, key in slide.references():
            if chapter not in chapters or key not in chapters[chapter][0]:
                problems.append(f"slide {slide.title!r}: glue {chapter}/{key}")
        if slide.figure and (slide.figure.chapter not in chapters
                             or slide.figure.name not in chapters[slide.figure.chapter][1]):
            problems.append(f"slide {slide.title!r}: figure {slide.figure.chapter}/{slide.figure.name}")
    assert not problems, "the deck names what no chapter declares:\n" + "\n".join(problems)
    assert slides[0].layout == "title" and all(s.notes for s in slides)
    used = {c for s in slides for c, _ in s.references()} | {s.figure.chapter for s in slides if s.figure}
    assert {"01_background", "04_concept_memory", "05_many_memories", "06_geometry", "07_limitations"} <= used


def test_the_deck_prints_to_a_pdf_of_one_page_per_slide(tmp_path: Path) -> None:
    try:
        reader.find_chromium()
    except BookError as err:
        pytest.skip(str(err))
    write_chapter(tmp_path)
    out = build_slides(tmp_path, write_deck(tmp_path))
    pdf = export_pdf(out)
    assert pdf == out.with_suffix(".pdf") and pdf.read_bytes().startswith(b"%PDF")
    assert pdf_pages(pdf) == 2  # the two slides of the test deck, one page each
