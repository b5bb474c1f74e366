"""The book pipeline: papermill executes the chapters, Jupyter Book renders the executed copies.

A chapter is a jupytext MyST notebook ``notebooks/NAME.md``; ``_toc.yml`` lists its executed
copy as ``_executed/NAME``. Executing a chapter converts it to ``.ipynb``, checks the
parameters it is given against the ones its ``parameters`` cell declares (before any work
starts), and runs it with papermill in the repository root. Building the book executes every
listed chapter and then runs ``jupyter-book build -W -n --keep-going`` with execution off, so
the HTML shows exactly what ran.

Modules: ``toc`` (the chapters), ``parameters`` (declared and checked parameters), ``execute``
(papermill), ``statistics`` (the log of chapter runs and its page), ``paper`` (the
table "This book and the paper" that ends a chapter), ``mathjax`` (the offline
MathJax), ``build`` (the whole book), ``banner`` (a chapter's banner), ``sphinx`` (the Sphinx
extension named in _config.yml). The names below
are re-exports: patch a function in the module that defines it (``book.build.prepare_models``).
"""

from .banner import banner_markdown, device_label, show_banner
from .build import build_book, prepare_models, warm_matplotlib
from .execute import execute_chapter
from .mathjax import vendor_mathjax
from .paper import paper_table_markdown, show_paper_table
from .parameters import (
    NotebookParameter,
    ParameterError,
    chapter_parameters,
    check_parameters,
    notebook_parameters,
    parse_value,
    profile_reference,
    unused_profile_parameters,
    whole_number,
)
from .toc import EXECUTED_DIR, SOURCE_DIR, BookError, Chapter, chapters, find_root, resolve_chapter

__all__ = [
    "EXECUTED_DIR", "SOURCE_DIR",
    "BookError", "Chapter", "NotebookParameter", "ParameterError",
    "banner_markdown", "build_book", "chapter_parameters", "chapters", "check_parameters", "device_label",
    "execute_chapter", "find_root", "notebook_parameters", "parse_value", "prepare_models", "profile_reference",
    "paper_table_markdown", "resolve_chapter", "show_banner", "show_paper_table", "unused_profile_parameters",
    "vendor_mathjax", "warm_matplotlib", "whole_number",
]
