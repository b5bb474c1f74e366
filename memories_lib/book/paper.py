"""The table that ends every chapter: this book's setting beside the paper's, and why they differ."""

from __future__ import annotations

from typing import Sequence

from .parameters import as_profile


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def paper_table_markdown(profile: str, rows: Sequence[tuple[str, object, object, object]]) -> str:
    """A Markdown table of ``(aspect, this book, the paper, why they differ)`` rows.

    The book's column is headed by the profile that executed the chapter; the values of that column
    are the chapter's to compute, the paper's are quotations of the paper or its official code.
    """
    name = as_profile(profile).name
    lines = [f"| | this book (`{name}`) | the paper | what differs, and why |", "|---|---|---|---|"]
    for aspect, ours, theirs, why in rows:
        lines.append(f"| **{_cell(aspect)}** | {_cell(ours)} | {_cell(theirs)} | {_cell(why)} |")
    return "\n".join(lines)


def show_paper_table(profile: str, rows: Sequence[tuple[str, object, object, object]]) -> None:
    """Display :func:`paper_table_markdown` as a Markdown output (rendered by the book as a table)."""
    from IPython.display import Markdown, display

    display(Markdown(paper_table_markdown(profile, rows)))
