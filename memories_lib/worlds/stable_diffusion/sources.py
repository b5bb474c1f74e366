"""The files a Stable Diffusion world reads, checked when it is opened (WorldErrors say what goes where).

Readers return small in-memory records (rows, captioned files, COCO images); images themselves
are read only when a set is drawn.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ...core.captions import (
    CAPTION_COLUMNS,
    CAPTIONS_FILE,
    CaptionsError,
    image_files,
    match_captions,
    read_captions,
)
from ...core.models import SUBFOLDERS
from ..base import WorldError, require_file

#: The columns a prompt CSV must have (the UnlearnDiffAtk layout).
PROMPT_COLUMNS = ("prompt", "evaluation_seed")

#: A hub id: ``owner/name`` (a path that does not exist and looks like this is read from the hub).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

#: Files of a ``save_pretrained`` model folder: its config, and weights in one of these forms.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")

COCO_HINT = ("Put COCO 2017 there: the validation images in val2017/ and their captions in "
             "annotations/captions_val2017.json (from annotations_trainval2017.zip, https://cocodataset.org)")


@dataclass(frozen=True)
class PromptRow:
    """A row of a prompt CSV: its position in the file (0-based), prompt and seed."""

    index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class CaptionedFile:
    """An image file and its caption."""

    path: Path
    caption: str


@dataclass(frozen=True)
class CocoImage:
    """A COCO image: its id, file and captions ordered by annotation id (the first is the one used)."""

    id: int
    path: Path
    captions: tuple[str, ...]


def _shorten(items: list, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _integer(text: str | None) -> int | None:
    """``text`` as an integer ("7" or "7.0", as pandas writes it), None if it is not one."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def base_model_source(value: str) -> str | Path:
    """The base model: a checked diffusers-layout folder, or a hub id (a string) when no such path exists."""
    path = Path(value).expanduser()
    if not path.exists() and HUB_ID.fullmatch(value):
        return value
    require_file(path, "base model folder", "Put a Stable Diffusion model in the diffusers layout there "
                 f"(subfolders {', '.join(SUBFOLDERS)}), e.g. a download of CompVis/stable-diffusion-v1-4, "
                 "or give a hub id as base_model")
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise WorldError(f"base model folder {path} lacks the subfolder(s) {missing} of the diffusers layout "
                         f"({', '.join(SUBFOLDERS)})")
    return path


def read_prompt_csv(value: str, concept: str) -> tuple[PromptRow, ...]:
    """The rows of a concept's prompt CSV, in file order."""
    path = require_file(value, f"prompt CSV of concept {concept!r}",
                        f"Put a CSV with the columns {', '.join(PROMPT_COLUMNS)} there "
                        "(the UnlearnDiffAtk layout, e.g. its prompts/church.csv)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in PROMPT_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise WorldError(f"prompt CSV {path} has no column(s) {missing}; its columns are {reader.fieldnames}")
        rows = []
        for index, record in enumerate(reader):
            line = index + 2  # the header is line 1
            prompt = (record["prompt"] or "").strip()
            seed = _integer(record["evaluation_seed"])
            if seed is None:
                raise WorldError(f"{path}, line {line}: evaluation_seed {record['evaluation_seed']!r} "
                                 "is not an integer")
            if not prompt:
                raise WorldError(f"{path}, line {line}: the prompt is empty")
            rows.append(PromptRow(index, prompt, seed))
    if not rows:
        raise WorldError(f"prompt CSV {path} has no rows")
    return tuple(rows)


def read_caption_folder(value: str, concept: str) -> tuple[CaptionedFile, ...]:
    """The captioned images of a concept's folder, sorted by file name; every image needs a caption."""
    folder = require_file(value, f"image folder of concept {concept!r}",
                          f"Put the concept's images there with their captions in {CAPTIONS_FILE} "
                          f"(columns {','.join(CAPTION_COLUMNS)})")
    captions_file = require_file(folder / CAPTIONS_FILE, f"captions file of concept {concept!r}",
                                 f"Put a CSV there with the columns {','.join(CAPTION_COLUMNS)}: one row per image "
                                 f"of {folder}, file_name relative to it")
    try:
        captions = read_captions(captions_file)
        match_captions(folder, image_files(folder), captions, captions_file)
    except CaptionsError as err:
        raise WorldError(str(err)) from None
    if not captions:
        raise WorldError(f"captions file {captions_file} lists no images")
    return tuple(CaptionedFile(folder / name, captions[name]) for name in sorted(captions))


def read_coco(value: str) -> tuple[CocoImage, ...]:
    """The COCO val2017 images listed in the captions file, sorted by id, each with its captions."""
    root = require_file(value, "COCO folder", COCO_HINT)
    images_dir = require_file(root / "val2017", "COCO image folder", COCO_HINT)
    annotations = require_file(root / "annotations" / "captions_val2017.json", "COCO captions file", COCO_HINT)
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        notes = sorted((int(a["id"]), int(a["image_id"]), str(a["caption"]).strip()) for a in data["annotations"])
    except (ValueError, KeyError, TypeError) as err:
        raise WorldError(f"COCO captions file {annotations} is not in the COCO captions format: {err!r}") from err
    captions: dict[int, list[str]] = {}
    for _, image_id, caption in notes:
        captions.setdefault(image_id, []).append(caption)
    uncaptioned = sorted(i for i in files if not captions.get(i))
    if uncaptioned:
        raise WorldError(f"COCO image(s) {_shorten(uncaptioned)} have no caption in {annotations}")
    absent = sorted(name for name in files.values() if not (images_dir / name).is_file())
    if absent:
        raise WorldError(f"{len(absent)} COCO image(s) listed in {annotations} are not in {images_dir}: "
                         f"{_shorten(absent)}. {COCO_HINT}")
    if not files:
        raise WorldError(f"COCO captions file {annotations} lists no images")
    return tuple(CocoImage(i, images_dir / files[i], tuple(captions[i])) for i in sorted(files))


def check_model_folder(value: str, what: str, hint: str, also: tuple[str, ...] = ()) -> Path:
    """The ``save_pretrained`` folder of ``what`` with its config, weights and the files in ``also``."""
    folder = require_file(value, f"folder of the {what}", hint)
    for name in ("config.json", *also):
        require_file(folder / name, f"{name} of the {what}", hint)
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise WorldError(f"the {what} in {folder} has no weights (one of {list(WEIGHTS_FILES)}). {hint}")
    return folder


def class_names(folder: Path) -> list[str]:
    """The class names of the classifier saved in ``folder``, by index (its config.json's ``id2label``;
    ``LABEL_<i>`` where the config names none, as transformers does)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    labels = config.get("id2label") or {}
    n = len(labels) if labels else int(config.get("num_labels", 2))
    return [str(labels.get(str(i), labels.get(i, f"LABEL_{i}"))) for i in range(n)]


def num_classes(folder: Path) -> int:
    """How many classes the classifier saved in ``folder`` has (from its config.json)."""
    return len(class_names(folder))
