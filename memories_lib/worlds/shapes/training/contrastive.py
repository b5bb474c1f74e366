"""Stage ``contrastive``: the CLIP stand-in (:class:`~memories_lib.worlds.shapes.contrastive.ShapesCLIP`).

A multi-positive contrastive loss: a text may name only some of an image's attributes
("a star"), and every image of the batch that has them all is a positive for it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..contrastive import ShapesCLIP
from ..data import BACKGROUNDS, COLOURS, SHAPES, ShapeSpec, prompt
from .dataset import TrainingData, augment
from .loop import generator, init_seed, parameter_count, stage_seed, train_loop

Named = tuple[str | None, str | None, str | None]  # (shape, colour, background) a text names; None: not named


def partial_texts(specs: Sequence[ShapeSpec], gen: torch.Generator) -> tuple[list[str], list[Named]]:
    """One text per spec that names a random non-empty subset of its shape, colour and background."""
    keep = torch.rand(len(specs), 3, generator=gen) < 0.7
    texts, named = [], []
    for spec, (k_shape, k_colour, k_bg) in zip(specs, keep.tolist()):
        if not (k_shape or k_colour or k_bg):
            k_shape = True
        attrs = (spec.shape if k_shape else None, spec.colour if k_colour else None,
                 spec.background if k_bg else None)
        texts.append(prompt(*attrs))
        named.append(attrs)
    return texts, named


def matches(specs: Sequence[ShapeSpec], named: Sequence[Named]) -> torch.Tensor:
    """M[i, j] = 1 when image i has every attribute that text j names."""
    def codes(rows: Sequence[Named]) -> torch.Tensor:
        options = (SHAPES, COLOURS, BACKGROUNDS)
        return torch.tensor([[-1 if v is None else opts.index(v) for v, opts in zip(row, options)] for row in rows])

    have = codes([(s.shape, s.colour, s.background) for s in specs])  # (B, 3)
    want = codes(named)  # (T, 3), -1 where the text does not name the attribute
    ok = (want[None] == -1) | (want[None] == have[:, None])
    return ok.all(-1).float()


def train_contrastive(cfg: Mapping[str, Any], data: TrainingData, device: str = "cpu",
                      progress: bool = True) -> tuple[ShapesCLIP, dict[str, Any]]:
    """Train the CLIP stand-in with a multi-positive contrastive loss; returns it and held-out accuracies."""
    kc = cfg["contrastive"]
    start = time.perf_counter()
    images, specs = data.train
    with init_seed(stage_seed(cfg, "contrastive")):
        model = ShapesCLIP(kc["channels"], kc["embed_dim"], cfg["image_size"])
    model.to(device).train()
    gen = generator(stage_seed(cfg, "contrastive"))

    def step(_: int) -> torch.Tensor:
        idx = torch.randint(0, images.shape[0], (kc["batch_size"],), generator=gen)
        batch_specs = [specs[i] for i in idx.tolist()]
        texts, named = partial_texts(batch_specs, gen)
        match = matches(batch_specs, named).to(device)
        x = augment(images[idx].float() / 255.0, gen, 0.05).to(device)
        # (1) logits = exp(logit_scale) * cosine similarities, the scale capped at 100 as in CLIP;
        # (2) cross-entropy of each image against the texts, and of each text against the images,
        #     with the probability spread evenly over every match.
        logits = model.logit_scale.clamp(max=math.log(100)).exp() * model.encode_images(x) @ model.encode_texts(texts).T
        loss_i = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_t = -(match.T / match.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        return (loss_i + loss_t) / 2

    losses = train_loop(model.parameters(), step, steps=kc["steps"], lr=kc["lr"], warmup=max(1, kc["steps"] // 20),
                        floor=0.02, weight_decay=1e-4, desc="training contrastive model", progress=progress)
    model.eval().requires_grad_(False)
    eval_images, eval_specs = data.eval
    x = eval_images.float() / 255.0
    metrics = {
        "seconds": time.perf_counter() - start,
        "parameters": parameter_count(model),
        "final_loss": float(np.mean(losses[-50:])),
        "eval_images": len(eval_specs),
    }
    # Zero-shot accuracy per attribute: the most similar of "a circle", "a square", ...
    for head, options in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS)):
        texts = [prompt(**{head: o}) for o in options]
        best = model.similarity(x, texts).argmax(1).numpy()
        truth = np.asarray([options.index(getattr(s, head)) for s in eval_specs])
        metrics[f"eval_zero_shot_{head}"] = float((best == truth).mean())
    return model, metrics
