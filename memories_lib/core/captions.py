"""Folders of captioned images (the Hugging Face ImageFolder layout): image files and a ``metadata.csv``.

A folder holds image files (any depth; hidden files and folders are skipped) and, for their
captions, a CSV of columns ``file_name,text``, ``file_name`` relative to the folder. Read by the
Stable Diffusion world (a concept's images) and by ``memories audit`` (any two folders).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

#: Suffixes of image files.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: A folder's captions file and its columns.
CAPTIONS_FILE = "metadata.csv"
CAPTION_COLUMNS = ("file_name", "text")


class CaptionsError(ValueError):
    """A captions file that cannot be read, or that does not match its folder's images."""


def shorten(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` items, and how many more."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def image_files(folder: Path) -> list[str]:
    """The image files under ``folder`` (relative POSIX paths, sorted; hidden files and folders skipped)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_captions(path: Path, require_text: bool = True) -> dict[str, str]:
    """file_name -> text from a captions CSV; with ``require_text`` an empty caption is an error."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CAPTION_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise CaptionsError(f"captions file {path} has no column(s) {missing}; its columns are {reader.fieldnames}")
        captions: dict[str, str] = {}
        for line, record in enumerate(reader, start=2):  # the header is line 1
            name, text = (record["file_name"] or "").strip(), (record["text"] or "").strip()
            if not name or (require_text and not text):
                raise CaptionsError(f"{path}, line {line}: file_name {'and text ' if require_text else ''}"
                                    "must not be empty")
            if name in captions:
                raise CaptionsError(f"{path} lists {name} twice")
            captions[name] = text
    return captions


def match_captions(folder: Path, names: Sequence[str], captions: dict[str, str], captions_file: Path) -> None:
    """Every listed file is in the folder and every image file of the folder is listed (CaptionsError naming them)."""
    absent = sorted(set(captions) - set(names))
    if absent:
        raise CaptionsError(f"{captions_file} lists image(s) that are not in {folder}: {shorten(absent)}; "
                            "put them there or remove their rows")
    uncaptioned = [name for name in names if name not in captions]
    if uncaptioned:
        raise CaptionsError(f"image(s) of {folder} have no caption in {captions_file}: {shorten(uncaptioned)}; "
                            "add a row file_name,text for each (or move them out of the folder)")
