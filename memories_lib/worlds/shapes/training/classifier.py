"""Stage ``classifier``: the concept classifier (:class:`~memories_lib.worlds.shapes.classifier.ShapesClassifier`)."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch

from ..classifier import HEADS, ShapesClassifier
from ..data import labels
from .dataset import TrainingData, augment
from .loop import generator, init_seed, parameter_count, stage_seed, train_loop


def train_classifier(cfg: Mapping[str, Any], data: TrainingData, device: str = "cpu",
                     progress: bool = True) -> tuple[ShapesClassifier, dict[str, Any]]:
    """Train the shape/colour/background classifier; returns it and its held-out accuracy."""
    cc = cfg["classifier"]
    start = time.perf_counter()
    images, specs = data.train
    targets = labels(specs)
    with init_seed(stage_seed(cfg, "classifier")):
        model = ShapesClassifier(cc["channels"], cfg["image_size"])
    model.to(device).train()
    gen = generator(stage_seed(cfg, "classifier"))

    def step(_: int) -> torch.Tensor:
        idx = torch.randint(0, images.shape[0], (cc["batch_size"],), generator=gen)
        x = augment(images[idx].float() / 255.0, gen, cc["noise"]).to(device)
        logits = model(x)
        return sum(torch.nn.functional.cross_entropy(logits[h], targets[h][idx].to(device)) for h in HEADS)

    losses = train_loop(model.parameters(), step, steps=cc["steps"], lr=cc["lr"], warmup=max(1, cc["steps"] // 20),
                        floor=0.02, weight_decay=1e-4, desc="training classifier", progress=progress)
    model.eval().requires_grad_(False)
    eval_images, eval_specs = data.eval
    predicted = model.predict(eval_images.float() / 255.0)
    metrics = {
        "seconds": time.perf_counter() - start,
        "parameters": parameter_count(model),
        "final_loss": float(np.mean(losses[-50:])),
        "eval_images": len(eval_specs),
    }
    for head in HEADS:
        truth = np.asarray([getattr(s, head) for s in eval_specs])
        metrics[f"eval_accuracy_{head}"] = float((predicted[head] == truth).mean())
    return model, metrics
