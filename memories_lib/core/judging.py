"""How well a concept is erased: generate from prompts, let a detector judge, count.

The UCE paper's object experiment generates images from prompts naming a class and counts
how often a classifier (ResNet-50) still sees that class, for the erased class and for the
others. :func:`judged_generations` does the generating and judging for any model and any
detector with ``label_names`` (head -> label names) and ``predict_proba(images01) -> {head: (N, K)
probabilities}`` (a world's :class:`~memories_lib.worlds.base.Detector`). The generated images
go through the results store, keyed by what determines them only (:func:`generation_parts`: the
model's weights hash, the prompts and the sampling settings), so rerunning a chapter does not
regenerate, and neither does a new detector: the detector judges the stored images each time
(milliseconds for thousands of the shapes world's images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .models import LDM
from .sampling import regenerate, sample_seeds
from .store import Store, default_store, locked_beside


@dataclass
class JudgedGenerations:
    """Images generated from ``prompts`` (one each) and the classifier's verdicts.

    images: (N, 3, H, W) in [0, 1], float32 on the CPU.
    proba:  head -> (N, K) class probabilities.
    labels: head -> (N,) predicted label names (``label_names[head][argmax]``).
    """

    prompts: list[str]
    images: torch.Tensor
    proba: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray]

    def accuracy(self, head: str, expected: str | Sequence[str]) -> float:
        """Share of images whose ``head`` verdict equals ``expected`` (one label, or one per image)."""
        if head not in self.labels:
            raise ValueError(f"no classifier head {head!r}; heads: {sorted(self.labels)}")
        want = np.asarray([expected] * len(self.prompts) if isinstance(expected, str) else list(expected))
        if want.shape != self.labels[head].shape:
            raise ValueError(f"{len(want)} expected labels for {len(self.prompts)} images")
        return float((self.labels[head] == want).mean()) if len(want) else float("nan")

    def share(self, head: str) -> dict[str, float]:
        """How often each label of ``head`` was predicted (the distribution of verdicts)."""
        values, counts = np.unique(self.labels[head], return_counts=True)
        return {str(v): float(c) / len(self.prompts) for v, c in zip(values, counts)}


def concept_head(detector: Any, concept: str) -> str:
    """The head of ``detector`` that has ``concept`` among its labels (ValueError listing them otherwise)."""
    for head, labels in detector.label_names.items():
        if concept in labels:
            return head
    known = [label for labels in detector.label_names.values() for label in labels]
    raise ValueError(f"the detector has no label {concept!r}; its labels are {known}")


#: The ``kind`` of a store entry of generated images (:func:`generation_parts`).
GENERATIONS_KIND = "generations"


def generation_parts(model_hash: str, prompts: Sequence[str], *, seed: int, num_steps: int,
                     guidance_scale: float) -> dict[str, Any]:
    """The key parts of the images that :func:`judged_generations` generates: what determines them, no judge."""
    return {
        "kind": GENERATIONS_KIND,
        "model": model_hash,
        "prompts": list(prompts),
        "seed": int(seed),
        "num_steps": int(num_steps),
        "guidance_scale": float(guidance_scale),
    }


def judged_generations(
    ldm: LDM,
    detector: Any,
    prompts: Sequence[str],
    *,
    seed: int,
    num_steps: int,
    guidance_scale: float,
    batch_size: int | None = None,
    store: Store | None = None,
    progress: bool = True,
) -> JudgedGenerations:
    """Generate one image per prompt (seeds from ``torch.Generator().manual_seed(seed)``) and let ``detector`` judge them.

    The same ``seed`` gives the same seeds z_T for every model, so base and erased models are
    compared image for image. The images are cached in ``store`` (default: the project's results
    store) as uint8, keyed by :func:`generation_parts`; the detector judges them as stored (each
    value a multiple of 1/255), whether they were just generated or found in the store.
    """
    return judged_generations_many(ldm, detector, [(prompts, seed)], num_steps=num_steps,
                                   guidance_scale=guidance_scale, batch_size=batch_size, store=store,
                                   progress=progress)[0]


def judged_generations_many(
    ldm: LDM,
    detector: Any,
    requests: Sequence[tuple[Sequence[str], int]],
    *,
    num_steps: int,
    guidance_scale: float,
    batch_size: int | None = None,
    store: Store | None = None,
    progress: bool = True,
) -> list[JudgedGenerations]:
    """:func:`judged_generations` for several ``(prompts, seed)`` requests with one model, generated together.

    Each request keeps its own seeds (drawn from its own generator, as alone) and its own store
    entry; the requests missing from the store are sampled in shared batches, so that many small
    requests (a prompt test's 54 images per concept) fill the UNet's large batches.
    """
    store = store or default_store()
    model_hash = ldm.weights_hash()
    parts, entries = [], []
    for prompts, seed in requests:
        prompts = list(prompts)
        if not prompts:
            raise ValueError("judged_generations needs at least one prompt")
        parts.append(generation_parts(model_hash, prompts, seed=seed, num_steps=num_steps,
                                      guidance_scale=guidance_scale))
        entries.append(store.get(store.key(**parts[-1])))
    missing = [i for i, e in enumerate(entries) if e is None]
    if missing:
        # One model's generations are made by one process at a time (two chapters running side by
        # side ask for the same prompt tests): whoever comes second reads what the first stored.
        with locked_beside(store.root / "locks" / f"generations-{model_hash}"):
            _generate_missing(ldm, store, parts, entries, num_steps, guidance_scale, batch_size, progress)
    return [_judge(detector, part["prompts"], entry.tensors["images"].float() / 255)
            for part, entry in zip(parts, entries)]


def _generate_missing(ldm: LDM, store: Store, parts: list[dict[str, Any]], entries: list, num_steps: int,
                      guidance_scale: float, batch_size: int | None, progress: bool) -> None:
    """Fill the ``None`` slots of ``entries`` (looked up again, then generated together and stored)."""
    entries[:] = [e if e is not None else store.get(store.key(**part)) for part, e in zip(parts, entries)]
    missing = [i for i, e in enumerate(entries) if e is None]
    if missing:
        seeds = torch.cat([sample_seeds(ldm, len(parts[i]["prompts"]), torch.Generator().manual_seed(parts[i]["seed"]))
                           for i in missing])
        prompts = [p for i in missing for p in parts[i]["prompts"]]
        images = regenerate(ldm, seeds, prompts, num_steps, guidance_scale, None, batch_size, progress)
        images = (images * 255).round().to(torch.uint8)
        start = 0
        for i in missing:
            n = len(parts[i]["prompts"])
            entries[i] = store.put(store.key(**parts[i]), {"images": images[start:start + n]}, {"n": n},
                                   parts=parts[i])
            start += n


def _judge(detector: Any, prompts: list[str], images: torch.Tensor) -> JudgedGenerations:
    """The detector's verdicts on ``images`` (generated from ``prompts``)."""
    proba = {head: p.float().cpu() for head, p in detector.predict_proba(images).items()}
    label_names = detector.label_names
    unknown = sorted(set(proba) - set(label_names))
    if unknown:
        raise ValueError(f"the detector's probabilities have head(s) {unknown} that its label_names do not name")
    labels = {head: np.asarray(label_names[head])[p.argmax(-1).numpy()] for head, p in proba.items()}
    return JudgedGenerations(prompts=prompts, images=images, proba=proba, labels=labels)
