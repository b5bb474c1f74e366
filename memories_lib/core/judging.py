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
from .sampling import generate
from .store import Store, default_store


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
    batch_size: int = 64,
    store: Store | None = None,
    progress: bool = True,
) -> JudgedGenerations:
    """Generate one image per prompt (seeds from ``torch.Generator().manual_seed(seed)``) and let ``detector`` judge them.

    The same ``seed`` gives the same seeds z_T for every model, so base and erased models are
    compared image for image. The images are cached in ``store`` (default: the project's results
    store) as uint8, keyed by :func:`generation_parts`; the detector judges them as stored (each
    value a multiple of 1/255), whether they were just generated or found in the store.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("judged_generations needs at least one prompt")
    store = store or default_store()
    parts = generation_parts(ldm.weights_hash(), prompts, seed=seed, num_steps=num_steps,
                             guidance_scale=guidance_scale)

    def compute():
        generator = torch.Generator().manual_seed(int(seed))
        _, images = generate(ldm, prompts, generator, num_steps, guidance_scale, batch_size=batch_size,
                             progress=progress)
        return {"images": (images * 255).round().to(torch.uint8)}, {"n": len(prompts)}

    entry = store.get_or_compute(parts, compute)
    images = entry.tensors["images"].float() / 255
    proba = {head: p.float().cpu() for head, p in detector.predict_proba(images).items()}
    label_names = detector.label_names
    unknown = sorted(set(proba) - set(label_names))
    if unknown:
        raise ValueError(f"the detector's probabilities have head(s) {unknown} that its label_names do not name")
    labels = {head: np.asarray(label_names[head])[p.argmax(-1).numpy()] for head, p in proba.items()}
    return JudgedGenerations(prompts=prompts, images=images, proba=proba, labels=labels)
