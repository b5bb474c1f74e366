"""Training of the shapes world's models, each stage cached by what it depends on.

Four stages, each written atomically into a folder of its own and skipped when present. A
stage's folder is keyed by the sections of the resolved training config that it reads
(``cache.STAGE_DEPENDS``) and the training code's version, so changing one model's settings
retrains that model (and what is trained on it) only:

``vae``          an ``AutoencoderKL``; its ``scaling_factor`` is measured (1 / std of the latents);
``unet``         a word tokenizer, a small ``CLIPTextModel`` and a ``UNet2DConditionModel``
                 trained jointly on the VAE's latents, saved with the VAE and a ``DDIMScheduler``
                 in the diffusers layout (folder ``shapes-ldm-<key>``, loadable by ``core.models.load_ldm``);
``classifier``   the concept classifier (:class:`~memories_lib.worlds.shapes.classifier.ShapesClassifier`);
``contrastive``  the CLIP stand-in (:class:`~memories_lib.worlds.shapes.contrastive.ShapesCLIP`).

Modules: ``cache`` (stage folders, their keys, metrics), ``loop`` (seeds, schedule and the one
training loop), ``dataset`` (training images, augmentations), one per trainer (``vae``,
``text_unet``, ``classifier``, ``contrastive``) and ``cli`` (``memories train-mini``; not imported here).
Training is deterministic given the config's seed (on one device and thread count).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ....core.models import save_ldm
from ....core.parallel import executor as parallel_executor
from ....core.progress import note
from ....core.throughput import max_threads
from ....core.store import locked_beside
from ..classifier import ShapesClassifier
from ..config import resolve_config
from ..contrastive import ShapesCLIP
from . import classifier, contrastive, text_unet, vae
from .cache import (
    STAGE_DEPENDS,
    STAGES,
    Config,
    missing_stages,
    stage_parts,
    stage_path,
    training_report,
    training_wall_seconds,
    write_stage,
)
from .dataset import TrainingData

__all__ = [
    "STAGE_DEPENDS",
    "STAGES",
    "TrainingError",
    "default_threads",
    "ensure_trained",
    "load_classifier",
    "load_contrastive",
    "missing_stages",
    "stage_path",
    "training_report",
    "training_wall_seconds",
]


class TrainingError(RuntimeError):
    """A training stage that cannot run (e.g. a missing earlier stage in a broken cache)."""


def default_threads() -> int:
    """Torch CPU threads for training: ``$MEMORIES_THREADS``, else every core of the machine.

    The count is fixed rather than read from the machine's load, because floating-point
    results are bit-for-bit reproducible only for a given thread count. On a machine that
    other processes keep busy, set ``MEMORIES_THREADS=1``: oversubscribed threads wait on
    each other and can make every step several times slower.
    """
    return max_threads()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's CPU thread count set to ``threads`` (default: :func:`default_threads`), restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or default_threads()))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run_stage(stage: str, cfg: dict[str, Any], data: TrainingData, device: str, progress: bool) -> None:
    """Train one stage and write it (weights, metrics and key parts) into its folder."""
    target = stage_path(cfg, stage)
    parts = stage_parts(cfg, stage)
    start, started_at = time.perf_counter(), time.time()
    note(f"training the world: stage {stage}", disable=not progress)

    def context(metrics: dict[str, Any]) -> dict[str, Any]:
        # wall_seconds includes drawing the data set when this stage is the first to need it; the times of
        # day let training_wall_seconds tell stages trained side by side from stages trained in turn.
        seconds = time.perf_counter() - start
        return {**metrics, "wall_seconds": seconds, "threads": torch.get_num_threads(), "device": str(device),
                "started_at": started_at, "finished_at": started_at + seconds}

    if stage == "vae":
        autoencoder, metrics = vae.train_vae(cfg, data, device, progress)
        write_stage(target, lambda tmp: autoencoder.to("cpu").save_pretrained(tmp), context(metrics), parts)
    elif stage == "unet":
        from diffusers import AutoencoderKL

        vae_folder = stage_path(cfg, "vae")
        if not vae_folder.is_dir():
            raise TrainingError(f"the unet stage needs the trained VAE in {vae_folder}")
        autoencoder = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False)
        unet, text_encoder, tokenizer, metrics = text_unet.train_text_unet(cfg, autoencoder, data, device, progress)

        def write(tmp: Path) -> None:
            save_ldm(tmp, vae=autoencoder.to("cpu"), unet=unet.to("cpu"), text_encoder=text_encoder.to("cpu"),
                     tokenizer=tokenizer, scheduler=text_unet.build_scheduler())

        write_stage(target, write, context(metrics), parts)
    elif stage == "classifier":
        model, metrics = classifier.train_classifier(cfg, data, device, progress)
        write_stage(target, lambda tmp: model.to("cpu").save(tmp), context(metrics), parts)
    else:
        model, metrics = contrastive.train_contrastive(cfg, data, device, progress)
        write_stage(target, lambda tmp: model.to("cpu").save(tmp), context(metrics), parts)


def ensure_trained(
    config: Config = None,
    stages: Sequence[str] = STAGES,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
    parallel: bool = True,
) -> Path:
    """Train whatever of ``stages`` is not cached yet; return the diffusers folder of the world's LDM.

    ``config`` is a preset name or a (partial) config mapping (see ``shapes.config``).
    Each stage is written atomically and skipped when present, so an interrupted run
    resumes at the stage it was in. ``threads`` sets torch's CPU threads while training
    (default: :func:`default_threads`), restored afterwards; results are bit-for-bit
    reproducible for a given device and thread count. With ``parallel``, the default threads
    and at least two cores, the judges (classifier, contrastive model) train in a second process
    beside the VAE and the LDM, one half of the cores each (the stages' batches of 32 to 128 rows
    gain nothing from a second thread, :mod:`memories_lib.core.throughput`): the same models as
    two single-thread trainings, in the time of the longer chain.
    """
    cfg = resolve_config(config)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown training stage(s) {unknown}; stages: {STAGES}")
    needed = set(stages)
    if "unet" in needed:
        needed.add("vae")  # the LDM cannot be trained without its autoencoder
    needed_in_order = [s for s in STAGES if s in needed]
    missing = missing_stages(cfg, needed_in_order)
    beside = [s for s in missing if s in JUDGE_STAGES]
    if parallel and threads is None and max_threads() >= 2 and beside and len(beside) < len(missing):
        # The judges do not need the LDM: train them in a second process while this one trains the
        # VAE and the LDM, each process with its share of the cores (one thread each on two cores).
        with parallel_executor(2) as pool:
            side = pool.submit(_train_quietly, cfg, tuple(beside), device)
            _train_stages(cfg, [s for s in missing if s not in beside], device, max(1, max_threads() // 2),
                          progress)
            side.result()
            if progress:
                print(f"[memories] trained the judges ({', '.join(beside)}) in a second process", file=sys.stderr)
    else:
        _train_stages(cfg, missing, device, threads, progress)
    return stage_path(cfg, "unet")


#: The stages that do not depend on the LDM (the judges), trained beside it when there are cores to spare.
JUDGE_STAGES = ("classifier", "contrastive")


def _train_stages(cfg: dict[str, Any], stages: Sequence[str], device: str, threads: int | None,
                  progress: bool) -> None:
    data = TrainingData(cfg, progress=progress)  # drawn on first use: at most once per call, shared by the stages
    for stage in stages:
        target = stage_path(cfg, stage)
        with locked_beside(target):  # another process may have trained it meanwhile: look again under the lock
            if not target.is_dir():
                with _torch_threads(threads):
                    _run_stage(stage, cfg, data, device, progress)


def _train_quietly(cfg: dict[str, Any], stages: tuple[str, ...], device: str) -> None:
    """Train ``stages`` without progress bars (in a worker process; its threads come from the worker's share)."""
    _train_stages(cfg, stages, device, None, progress=False)


def load_classifier(config: Config = None, device: str = "cpu", progress: bool = True) -> ShapesClassifier:
    """The world's trained concept classifier (trained first if it is not cached)."""
    ensure_trained(config, stages=("classifier",), progress=progress)
    return ShapesClassifier.load(stage_path(config, "classifier"), device=device)


def load_contrastive(config: Config = None, device: str = "cpu", progress: bool = True) -> ShapesCLIP:
    """The world's trained contrastive image-text model (trained first if it is not cached)."""
    ensure_trained(config, stages=("contrastive",), progress=progress)
    return ShapesCLIP.load(stage_path(config, "contrastive"), device=device)
