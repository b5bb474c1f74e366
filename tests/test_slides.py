"""The slide deck: deck file parser, glued numbers and figures read from executed notebooks, the HTML, the CLI.

The executed notebooks are made by hand with nbformat in the layout papermill and myst-nb write
(glued values as outputs with ``metadata.scrapbook``, figures as cells with ``mystnb.figure``), so
nothing executes a model. The last test checks the shipped deck against the chapters' sources.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from PIL import Image, ImageDraw

from memories_lib.book import BookError, reader
from memories_lib.book.slides import (
    ExecutedBook,
    FigureRef,
    Slide,
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
                  figure: str = "fig-distances", with_image: bool = True, png: str = PNG) -> Path:
    """An executed chapter ``root/_executed/NAME.ipynb`` (and its source): a banner, glued values, a figure."""
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "notebooks" / f"{name}.md").write_text("# a chapter\n")
    banner = nbformat.v4.new_code_cell("show_banner(profile)", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/markdown": f"```{{admonition}} Executed with the {profile} profile\n```",
                              "text/plain": "<IPython.core.display.Markdown object>"})])
    glue_cell = nbformat.v4.new_code_cell("glue(...)", outputs=[
        glue_output(k, v) for k, v in (glued if glued is not None else {"min_psnr": 23.456, "num_images": 8}).items()])
    image = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]
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


def _browser() -> str:
    try:
        return reader.find_chromium()
    except BookError as err:
        pytest.skip(str(err))  # CI installs Chromium before `make test` (.ci/run)


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


def test_a_slide_of_a_chapter_that_does_not_run_in_the_world_is_left_out(tmp_path: Path, capsys, monkeypatch) -> None:
    from memories_lib.book.execute import write_placeholder
    from memories_lib.book.toc import Chapter

    monkeypatch.setenv("MEMORIES_SD14", str(tmp_path))  # the profile's paths are not opened here

    write_chapter(tmp_path, profile="sd14")
    (tmp_path / "notebooks" / "03_erasure.md").write_text("---\nmemories:\n  worlds: [shapes]\n---\n# Erasing\n")
    chapter = Chapter(name="03_erasure", source=tmp_path / "notebooks" / "03_erasure.md", root=tmp_path)
    write_placeholder(chapter, _sd_profile(tmp_path, "tiny-sd"))
    deck = DECK + "\n---\n\n# Motivation\nfigure: 03_erasure/fig-erasure-grid\n- {glue:03_erasure/n_concepts} concepts\n"
    page = build_slides(tmp_path, write_deck(tmp_path, deck)).read_text()
    assert page.count('<section class="slide') == 2 and "Motivation" not in page
    assert "1 / 2" in page and "2 / 2" in page  # numbered among the slides shown
    assert ("slide 3 ('Motivation') is left out: chapter 03_erasure was not executed in this book's "
            "stable-diffusion world") in capsys.readouterr().err
    first = write_deck(tmp_path, "# Title\nlayout: title\n- {glue:03_erasure/n_concepts}\n\n---\n\n" + DECK)
    with pytest.raises(SlidesError, match="the deck's first slide reads a chapter this book's world does not execute"):
        build_slides(tmp_path, first)


def _sd_profile(root: Path, name: str) -> Path:
    """A profile file of a Stable Diffusion world (only its world's kind matters to a placeholder)."""
    from memories_lib.core.profile import PROFILES_DIR

    text = (PROFILES_DIR / "sd14.yaml").read_text().replace("name: sd14", f"name: {name}")
    path = root / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_title_slide_names_a_profile_given_as_a_file_by_its_name(tmp_path: Path) -> None:
    path = write_chapter(tmp_path, profile="mine")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["papermill"]["parameters"]["profile"] = str(tmp_path / "profiles" / "mine.yaml")
    nbformat.write(nb, path)
    page = build_slides(tmp_path, write_deck(tmp_path)).read_text()
    assert "Executed with the mine profile on Linux x86_64, 2 CPU cores, no GPU" in page


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
    browser = _browser()
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
    # the title slide reads only chapters that run in every world, so a Stable Diffusion book has one too
    from memories_lib.book.toc import chapter_worlds

    assert all(chapter_worlds(ROOT / "notebooks" / f"{c}.md") is None for c in slides[0].chapters())
    used = {c for s in slides for c, _ in s.references()} | {s.figure.chapter for s in slides if s.figure}
    assert {"01_background", "04_concept_memory", "05_many_memories", "06_geometry", "07_limitations"} <= used


def test_the_deck_prints_to_a_pdf_of_one_page_per_slide(tmp_path: Path) -> None:
    _browser()
    write_chapter(tmp_path)
    out = build_slides(tmp_path, write_deck(tmp_path))
    pdf = export_pdf(out)
    assert pdf == out.with_suffix(".pdf") and pdf.read_bytes().startswith(b"%PDF")
    assert pdf_pages(pdf) == 2  # the two slides of the test deck, one page each


# ------------------------------------------------------------------ the deck read as a person would: pixels

INK = 48  # a pixel is ink when a channel differs from the slide's white by more than this


def _ink(image, box: tuple[int, int, int, int] | None = None) -> float:
    """The fraction of the pixels of ``image`` (within ``box``) that are not the slide's white."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    if box is not None:
        left, top, right, bottom = box
        pixels = pixels[top:bottom, left:right]
    if not pixels.size:
        return 0.0
    return float((np.abs(255 - pixels).max(axis=-1) > INK).mean())


def _screenshot(browser: str, url: str, out: Path, size: tuple[int, int] = (1280, 720)):
    """``url`` as headless Chromium draws it in a window of ``size`` (a PIL image)."""
    with tempfile.TemporaryDirectory(prefix="memories-slides-") as profile_dir:
        done = subprocess.run([browser, *reader.CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
                               "--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
                               f"--screenshot={out}", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.is_file(), f"Chromium drew nothing for {url}: {done.stderr[-300:]}"
    with Image.open(out) as image:
        return image.convert("RGB")


def _slide_box(image) -> tuple[int, int, int, int]:
    """The white 16:9 slide inside the dark page around it (the deck centres it)."""
    white = (np.asarray(image) > 240).all(axis=-1)
    rows, cols = np.flatnonzero(white.any(axis=1)), np.flatnonzero(white.any(axis=0))
    assert rows.size and cols.size, "no slide on the page"
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def read_deck(deck: Path, book: ExecutedBook, browser: str, out_dir: Path) -> list[str]:
    """Every problem a person would see, slide by slide, in the HTML deck and in its PDF beside it.

    HTML: each slide, opened by its address ``#N``, is drawn to a PNG; it must show a slide with text
    on it, and a slide that names a figure must change where the figure is when the figure is hidden
    (the image is drawn, visible and not tiny). PDF: each page is rendered to a PNG; it must have
    ink, and hold exactly the images its slide names, at their own pixel size, over a real part of
    the page.
    """
    slides = parse_deck((book.root / "slides" / "deck.md").read_text(), source="deck.md")
    problems: list[str] = []
    hidden = out_dir / "hidden-figures.html"  # the same deck with every figure made invisible (it is self-contained)
    hidden.write_text(deck.read_text().replace("</style>", ".frame img { visibility: hidden; }</style>", 1))
    with pdfium.PdfDocument(deck.with_suffix(".pdf")) as pdf:
        if len(pdf) != len(slides):
            problems.append(f"the PDF has {len(pdf)} pages for {len(slides)} slides")
        for number, slide in enumerate(slides, start=1):
            problems += _read_slide(deck, hidden, number, slide, book, browser, out_dir)
            if number <= len(pdf):
                problems += _read_page(pdf[number - 1], number, slide, book, out_dir)
    return problems


def _read_slide(deck: Path, hidden: Path, number: int, slide: Slide, book: ExecutedBook, browser: str,
                out_dir: Path) -> list[str]:
    """The problems of slide ``number`` drawn by Chromium (``hidden``: the deck with its figures hidden)."""
    problems = []
    where = f"slide {number} ({slide.title!r})"
    shot = _screenshot(browser, f"{deck.as_uri()}#{number}", out_dir / f"slide-{number:02d}.png")
    box = _slide_box(shot)
    if (box[2] - box[0]) * (box[3] - box[1]) < 0.5 * shot.width * shot.height:
        problems.append(f"{where}: the slide covers only {box} of the window")
    if _ink(shot, box) < 0.003:
        problems.append(f"{where}: the slide is blank in the browser ({_ink(shot, box):.2%} ink)")
    figure = book.figure(slide.figure) if slide.figure else None
    if figure is not None:
        bare = _screenshot(browser, f"{hidden.as_uri()}#{number}", out_dir / f"slide-{number:02d}-bare.png")
        changed = np.abs(np.asarray(shot, np.int16) - np.asarray(bare, np.int16)).max(axis=-1) > INK
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        extent = (np.ptp(rows) * np.ptp(cols) / changed.size) if rows.size else 0.0
        if changed.mean() < 0.003 or extent < 0.1:
            problems.append(f"{where}: hiding its figure changes {changed.mean():.2%} of the window, over "
                            f"{extent:.1%} of it: the figure is not drawn, or drawn too small to read")
    return problems


def _read_page(page: pdfium.PdfPage, number: int, slide: Slide, book: ExecutedBook, out_dir: Path) -> list[str]:
    """The problems of the PDF's page ``number``, rendered with pypdfium2."""
    problems = []
    where = f"slide {number} ({slide.title!r})"
    figure = book.figure(slide.figure) if slide.figure else None
    rendered = page.render(scale=0.5).to_pil()
    rendered.save(out_dir / f"page-{number:02d}.png")
    if _ink(rendered) < 0.003:
        problems.append(f"{where}: the PDF page is blank ({_ink(rendered):.2%} ink)")
    images = list(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=5))
    if figure is None:
        if images:
            problems.append(f"{where}: the PDF page holds {len(images)} image(s) for a slide without a figure")
        return problems
    with Image.open(io.BytesIO(base64.b64decode(figure.data))) as drawn:
        size = drawn.size
    sizes = [tuple(o.get_px_size()) for o in images]
    if sizes != [size]:
        problems.append(f"{where}: the PDF page holds images of {sizes} pixels, not the figure's {size}")
        return problems
    left, bottom, right, top = images[0].get_bounds()
    width, height = page.get_size()
    share = (right - left) * (top - bottom) / (width * height)
    if share < 0.1:
        problems.append(f"{where}: the figure covers {share:.1%} of the PDF page")
    scale = rendered.width / width
    region = (int(left * scale), int((height - top) * scale), int(right * scale), int((height - bottom) * scale))
    if _ink(rendered, region) < 0.01:
        problems.append(f"{where}: the figure's place on the PDF page is blank")
    return problems


def drawn_png(size: tuple[int, int] = (480, 320)) -> str:
    """A figure-like PNG (axes, a curve, dots), base64 as a notebook stores it."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.line([(40, h - 30), (w - 10, h - 30)], fill="black", width=2)
    draw.line([(40, 10), (40, h - 30)], fill="black", width=2)
    draw.line([(40 + k * (w - 60) // 20, h - 40 - (k * k * (h - 60)) // 400) for k in range(21)], fill="#1f77b4", width=4)
    for k in range(30):
        x, y = 50 + (k * 37) % (w - 70), 20 + (k * 53) % (h - 70)
        draw.ellipse([x, y, x + 10, y + 10], fill="#d95f02")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _read_planted(root: Path, browser: str, plant: str = "") -> list[str]:
    """Build the hand-made deck at ``root``, add ``plant`` to its style, print it, and read it."""
    deck = build_slides(root, write_deck(root))
    deck.write_text(deck.read_text().replace("</style>", plant + "</style>", 1))
    export_pdf(deck, browser=browser)
    shots = root / "shots"
    shots.mkdir(exist_ok=True)
    return read_deck(deck, ExecutedBook(root), browser, shots)


def test_the_reader_of_the_deck_passes_a_good_deck_and_catches_blank_slides_and_missing_figures(tmp_path: Path) -> None:
    browser = _browser()
    good, tiny, blank = tmp_path / "good", tmp_path / "tiny-figure", tmp_path / "blank"
    write_chapter(good, png=drawn_png())
    assert _read_planted(good, browser) == []
    assert sorted(p.name for p in (good / "shots").glob("*.png")) == [
        "page-01.png", "page-02.png", "slide-01.png", "slide-02-bare.png", "slide-02.png"]
    write_chapter(tiny)  # its figure is a single pixel: drawn, but nothing anyone can read
    assert any("the figure is not drawn, or drawn too small" in p for p in _read_planted(tiny, browser))
    write_chapter(blank, png=drawn_png())
    problems = _read_planted(blank, browser, plant=".slide * { visibility: hidden; }")
    for text in ("slide 1 ('The paper'): the slide is blank in the browser",
                 "slide 1 ('The paper'): the PDF page is blank",
                 "slide 2 ('Concept memory'): hiding its figure changes 0.00%"):
        assert any(p.startswith(text) for p in problems), (text, problems)


@pytest.mark.slow
def test_make_slides_on_the_tiny_book_builds_a_deck_and_a_pdf_a_person_can_read(built_book, tmp_path: Path) -> None:
    browser = _browser()
    assert built_book.returncode == 0, built_book.failure()
    stamp = tmp_path / "installed"  # the environment running the tests is the installed project
    stamp.touch()
    done = subprocess.run(["make", "slides", f"BIN={Path(sys.executable).parent}", f"STAMP={stamp}"],
                          cwd=built_book.root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    deck = built_book.root / "_build" / "slides" / "index.html"
    assert "slides" in done.stdout and deck.with_suffix(".pdf").is_file()
    problems = read_deck(deck, ExecutedBook(built_book.root), browser, tmp_path)
    assert not problems, "\n".join(problems)
    slides = parse_deck((built_book.root / "slides" / "deck.md").read_text())
    assert len(list(tmp_path.glob("slide-??.png"))) == len(list(tmp_path.glob("page-??.png"))) == len(slides)
