"""Where the shapes world's trained models live: one folder per training config, one subfolder per stage.

A config's folder is ``core.store.keyed_folder("worlds", "shapes", parts)``, i.e.
``<cache_dir>/worlds/shapes-<key>``, the key being the store's content key of the resolved
config and :data:`TRAINING_VERSION`: two spellings of one config share a folder. A stage is
written atomically (``core.store.write_folder_atomically``) with its metrics beside its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ....core.store import keyed_folder, write_folder_atomically
from ..config import resolve_config

#: Bumped when the training code changes what a config produces (a new key: the old folders are not reused).
TRAINING_VERSION = 3

#: The training stages, in the order they run (the ``unet`` stage needs the ``vae`` stage).
STAGES: tuple[str, ...] = ("vae", "unet", "classifier", "contrastive")

#: The file of a stage's metrics (time, losses, quality), beside its weights.
METRICS_FILE = "training.json"

Config = Mapping[str, Any] | str | None


def cache_parts(config: Config) -> dict[str, Any]:
    """What the cache key of ``config`` is made of: the resolved config and the training code's version."""
    return {"config": resolve_config(config), "version": TRAINING_VERSION}


def cache_folder(config: Config) -> Path:
    """The folder holding every trained stage of ``config`` (it may not exist yet)."""
    return keyed_folder("worlds", "shapes", cache_parts(config))


def stage_folder(folder: Path, stage: str) -> Path:
    """A stage's subfolder of a config's folder; ``"unet"`` is the full diffusers folder ``ldm/``."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {STAGES}")
    return folder / ("ldm" if stage == "unet" else stage)


def stage_path(config: Config, stage: str) -> Path:
    """Where a stage of ``config`` lives (see :func:`stage_folder`)."""
    return stage_folder(cache_folder(config), stage)


def missing_stages(config: Config, stages: Sequence[str] = STAGES) -> list[str]:
    """The stages of ``stages`` that are not in the cache yet."""
    return [s for s in stages if not stage_path(config, s).is_dir()]


def training_report(config: Config) -> dict[str, dict[str, Any]]:
    """The metrics that each trained stage recorded, by stage."""
    report = {}
    for stage in STAGES:
        file = stage_path(config, stage) / METRICS_FILE
        if file.is_file():
            report[stage] = json.loads(file.read_text())
    return report


def write_stage(target: Path, write: Callable[[Path], None], metrics: Mapping[str, Any]) -> Path:
    """Write a stage atomically: ``write(tmp)`` puts the weights into a fresh folder, the metrics go beside them."""

    def write_with_metrics(tmp: Path) -> None:
        write(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2, sort_keys=True))

    return write_folder_atomically(target, write_with_metrics)
