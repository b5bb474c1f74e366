"""MathJax 3 vendored into the book (``_static/mathjax``), so its equations render offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from .toc import BookError

MATHJAX_DIR = Path("_static") / "mathjax"
# The parts of the installed MathJax 3 (PyPI ``django-static-mathjax``) that a page may load:
# the combined TeX/MathML -> CommonHTML component and what it fetches lazily (fonts, TeX
# extensions, menu, accessibility).
MATHJAX_PARTS = ("tex-mml-chtml.js", "output", "input", "ui", "a11y", "adaptors", "sre")


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
