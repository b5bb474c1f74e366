"""Where the shapes world's trained models live: one folder per stage, keyed by what that stage depends on.

Each stage reads only some sections of the resolved training config (:data:`STAGE_DEPENDS`), and
its folder is ``core.store.keyed_folder("worlds", "shapes-<dir>", parts)``, i.e.
``<cache_dir>/worlds/shapes-<dir>-<key>``, ``<dir>`` being the stage's entry in :data:`STAGE_DIRS`
and the key the store's content key of those sections and :data:`TRAINING_VERSION`
(:func:`stage_parts`). So a changed classifier setting retrains the classifier alone, a changed
VAE retrains the VAE and the UNet trained on its latents, and a changed seed or data size
retrains everything; two spellings of one config share their folders. The ``unet`` stage's
folder ``shapes-ldm-<key>`` is the whole diffusers folder of the world's LDM.

A stage is written atomically (``core.store.write_folder_atomically``) under a lock of its own
folder (``core.store.locked_beside``), with its metrics (:data:`METRICS_FILE`) and its key's
parts (:data:`KEY_FILE`) beside its weights; a folder that exists is complete.
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

#: The config keys of the training images (``dataset.TrainingData``) and of every stage's seed
#: (``loop.stage_seed``): every stage depends on them.
DATA_KEYS: tuple[str, ...] = ("seed", "image_size", "dataset_size", "eval_size")

#: The sections of the resolved config that each stage's trainer reads, directly or through an
#: earlier stage (the UNet trains on the VAE's latents): a stage's cache key is made of these.
STAGE_DEPENDS: dict[str, tuple[str, ...]] = {
    "vae": (*DATA_KEYS, "vae"),
    "unet": (*DATA_KEYS, "vae", "captions", "text_encoder", "unet"),
    "classifier": (*DATA_KEYS, "classifier"),
    "contrastive": (*DATA_KEYS, "contrastive"),
}

#: The name of each stage's folder before its key (``unet``: ``ldm``, the full diffusers folder).
STAGE_DIRS: dict[str, str] = {"vae": "vae", "unet": "ldm", "classifier": "classifier", "contrastive": "contrastive"}

#: The file of a stage's metrics (time, losses, quality), beside its weights.
METRICS_FILE = "training.json"

#: The file of what a stage's key is made of (:func:`stage_parts`), beside its weights.
KEY_FILE = "training_config.json"

Config = Mapping[str, Any] | str | None


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {STAGES}")


def stage_parts(config: Config, stage: str) -> dict[str, Any]:
    """What the cache key of a stage is made of: the stage, its sections of the resolved config, the version."""
    _check_stage(stage)
    cfg = resolve_config(config)
    return {"stage": stage, "config": {k: cfg[k] for k in STAGE_DEPENDS[stage]}, "version": TRAINING_VERSION}


def stage_path(config: Config, stage: str) -> Path:
    """The folder of a stage of ``config`` (it may not exist yet); ``"unet"``'s is the LDM's diffusers folder."""
    _check_stage(stage)
    return keyed_folder("worlds", f"shapes-{STAGE_DIRS[stage]}", stage_parts(config, stage))


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


def training_wall_seconds(report: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Seconds during which at least one stage of ``report`` was training (its wall clock), from the stages'
    recorded times of day: stages trained side by side count once, a pause between two runs not at all.

    ``None`` when a stage does not record them (trained before they were recorded); the stages'
    ``wall_seconds`` added up are then an upper bound.
    """
    spans = sorted((r["started_at"], r["finished_at"]) for r in report.values() if "started_at" in r)
    if not spans or len(spans) < len(report):
        return None
    total, (begin, end) = 0.0, spans[0]
    for start, finish in spans[1:]:
        if start > end:
            total, begin = total + end - begin, start
        end = max(end, finish)
    return total + end - begin


def write_stage(target: Path, write: Callable[[Path], None], metrics: Mapping[str, Any],
                parts: Mapping[str, Any]) -> Path:
    """Write a stage atomically: ``write(tmp)`` puts the weights into a fresh folder; metrics and key parts go beside."""

    def write_with_metrics(tmp: Path) -> None:
        write(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2, sort_keys=True))
        (tmp / KEY_FILE).write_text(json.dumps(dict(parts), indent=2, sort_keys=True))

    return write_folder_atomically(target, write_with_metrics)
