"""The reader's checks: every page of the built tiny book passes them, and each check fails on a planted page."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import make_book_root
from memories_lib.book import BookError, reader
from memories_lib.core import tables

# --------------------------------------------------------------------------- the table rules


@pytest.mark.parametrize("value, digits, text", [
    (1234.5, None, "1,234"), (123.45, None, "123.5"), (12.345, None, "12.35"), (0.012345, None, "0.0123"),
    (0.0, None, "0.00"), (7, None, "7"), (23050.44, 1, "23,050.4"), (np.float32(2.5), 2, "2.50"),
    (True, None, "yes"), (np.bool_(False), None, "no"), (None, None, "–"), (float("nan"), 2, "–"),
    (float("inf"), None, "–"), (pd.NA, None, "–"), ("as written", 3, "as written"),
])
def test_number_writes_values_by_the_book_rules(value, digits, text):
    assert tables.number(value, digits) == text


def test_intervals_differences_and_percentages():
    assert tables.interval(1.234, 1.1, 1.4) == "1.23 [1.10, 1.40]"
    assert tables.interval(float("nan"), 1, 2) == "–"
    assert tables.signed(0.004) == "0.00" and tables.signed(-0.3) == "-0.30" and tables.signed(0.12) == "+0.12"
    assert tables.percent(0.256) == "26%" and tables.percent(None) == "–"


def test_format_table_leaves_no_cell_a_reader_must_decode():
    frame = pd.DataFrame({"psnr": [21.456, np.nan], "passes": [True, False], "note": ["x [1, 2]", None],
                          "share": [0.5, 0.25]}, index=pd.Index(["uce", "esd-x"], name="method"))
    html = tables.format_table(frame, {"psnr": 1, "share": "{:.0%}"}, caption="a caption").to_html()
    cells = [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", html, re.S)]
    assert cells == ["21.5", "yes", "x [1, 2]", "50%", "–", "no", "–", "25%"]
    assert "a caption" in html
    assert "not reported" in tables.format_table(frame, missing="not reported").to_html()


def test_numbers_and_intervals_are_never_broken_over_lines_but_text_is():
    frame = pd.DataFrame({"d": ["1.20 [1.00, 1.50]"], "psnr": [21.3], "note": ["a sentence that may wrap"]})
    html = tables.format_table(frame).to_html()
    rule = re.search(r"([^{}]*)\{\s*white-space: nowrap;\s*\}", html).group(1)
    assert "row0_col0" in rule and "row0_col1" in rule and "row0_col2" not in rule


# --------------------------------------------------------------------------- glue keys, without a browser

PROSE = """\
The value is {glue:text}`glued:.2f` and {glue:text}`forgotten`.

```{glue:figure} also_forgotten
:name: fig-x
A caption.
```
"""
CHAPTER = """\
# A chapter

```{code-cell} ipython3
:tags: [parameters]

profile = "tiny"  # profile
```

""" + PROSE


def test_glue_keys_that_the_notebook_never_glued_are_reported(tmp_path):
    root = make_book_root(tmp_path / "book", {"01_chapter": CHAPTER})
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(PROSE),
        nbformat.v4.new_code_cell("glue('glued', 1.0)", outputs=[nbformat.v4.new_output(
            "display_data", data={"application/papermill.record/text/plain": "1.0"},
            metadata={"scrapbook": {"name": "glued", "mime_prefix": "application/papermill.record/"}})]),
    ])
    (root / "_executed").mkdir()
    nbformat.write(nb, root / "_executed" / "01_chapter.ipynb")
    problems = reader.glue_problems(root)
    assert {p.check for p in problems} == {"reference"}
    assert sorted(re.search(r"'(\w+)'", p.message).group(1) for p in problems) == ["also_forgotten", "forgotten"]


def test_missing_browser_and_missing_book_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(BookError, match="no built book"):
        reader.check_book(tmp_path, tmp_path / "nowhere")
    monkeypatch.setattr(reader.shutil, "which", lambda name: None)
    with pytest.raises(BookError, match="apt-get install chromium"):
        reader.find_chromium()


# --------------------------------------------------------------------------- the built book, in Chromium

def _browser() -> str:
    try:
        return reader.find_chromium()
    except BookError as err:
        pytest.skip(str(err))  # CI installs Chromium before `make test` (.ci/run)


@pytest.mark.slow
def test_every_page_of_the_tiny_book_passes_the_readers_checks(built_book):
    _browser()
    assert built_book.returncode == 0, built_book.failure()
    pages = reader.book_pages(built_book.html)
    assert len(pages) >= 8 and any(p.parent.name == "_executed" for p in pages)
    problems = reader.check_book(built_book.root, built_book.html)
    assert not problems, "\n".join(map(str, problems))


# One defect per check, planted at the top of a copy of a real chapter page: (name, check, HTML).
PLANTS = [
    ("wide-table", "width",
     "<table><tr>" + "".join(f"<td>a_long_unbreakable_cell_{i:02d}</td>" for i in range(12)) + "</tr></table>"),
    ("nan-cell", "cell", "<table><tr><th>psnr</th></tr><tr><td>NaN</td></tr></table>"),
    ("broken-number", "cell", '<table><tr><td style="width: 3em; max-width: 3em">1.23 [1.10, 1.40]</td></tr></table>'),
    ("squeezed-cell", "cell", '<table><tr><td style="width: 3em; max-width: 3em">4%, others 62%: FAILS</td></tr></table>'),
    ("bare-image", "figure", '<p><img src="{image}" alt="a bare image"></p>'),
    ("printed-glue", "reference", "<p>The value is {{glue:text}}`forgotten_key` dB.</p>"),
    ("raw-tex", "math", "<p>The seed $z_T$ of a raw formula.</p>"),
    ("other-profile", "profile", "<p>On the <code>{other}</code> profile these numbers mean something else.</p>"),
]


@pytest.mark.slow
def test_each_check_fails_on_a_planted_page(built_book):
    browser = _browser()
    assert built_book.returncode == 0, built_book.failure()
    page = built_book.html / "_executed" / "01_background.html"
    source = page.read_text()
    image = re.search(r'<img[^>]+src="([^"]+\.png)"', source).group(1)
    own = reader.page_profile(source)
    other = next(p for p in reader.list_profiles() if p != own)
    planted = {}
    for name, check, html in PLANTS:
        copy = page.with_name(f"planted-{name}.html")
        content = html.format(image=image, other=other)
        copy.write_text(source.replace('<article class="bd-article">', f'<article class="bd-article">{content}', 1))
        planted[name, check] = copy
    try:
        with ThreadPoolExecutor(2) as pool:
            found = dict(zip(planted, pool.map(
                lambda p: reader.read_page(p, built_book.html, reader.list_profiles(), browser), planted.values())))
    finally:
        for copy in planted.values():
            copy.unlink()
    for (name, check), problems in found.items():
        assert [p for p in problems if p.check == check], f"{name}: the {check} check missed it: {problems}"
        assert all(p.check == check for p in problems), f"{name} set off other checks: {problems}"
