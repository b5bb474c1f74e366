"""What every trainer of the shapes world shares: its seeds, the learning-rate schedule and the training loop."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from ....core.progress import tqdm
from .cache import STAGES

#: One optimisation step: ``step(i)`` returns the loss to minimise, or (that loss, the value to record).
Step = Callable[[int], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]

SHOW_EVERY = 20  # steps between updates of the progress bar's running loss


def stage_seed(cfg: Mapping[str, Any], stage: str) -> int:
    """A per-stage seed derived from the config's seed (stages do not share random streams)."""
    return int(cfg["seed"]) * 1000 + 1 + STAGES.index(stage)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a trainer's stream of random draws)."""
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def init_seed(seed: int) -> Iterator[None]:
    """Seed the global torch RNG for model construction only; its previous state comes back after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def parameter_count(module: torch.nn.Module) -> int:
    """The number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def warmup_cosine(warmup: int, steps: int, floor: float = 0.1) -> Callable[[int], float]:
    """The factor of the learning rate at each step: a linear warmup, then a cosine decay to ``floor``.

    (1) ``(step + 1) / warmup`` while ``step < warmup``;
    (2) ``floor + (1 - floor) * (1 + cos(pi * p)) / 2`` after, ``p = (step - warmup) / (steps - warmup)``
        capped at 1, so the factor goes from 1 to ``floor`` and stays there.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)  # (1)
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # (2)

    return factor


def train_loop(
    parameters: Iterable[torch.nn.Parameter],
    step: Step,
    *,
    steps: int,
    lr: float,
    warmup: int,
    floor: float = 0.1,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    after_step: Callable[[int], None] | None = None,
    desc: str,
    shown: str = "loss",
    progress: bool = True,
) -> list[float]:
    """Minimise ``step(i)``'s loss for ``steps`` steps with AdamW on a warmup-cosine schedule.

    Each step: ``step(i)``, zeroed gradients, backward, gradient clipping to ``max_grad_norm``
    (when given), the optimiser's and the schedule's step, then ``after_step(i)`` (e.g. an EMA
    update). The progress bar shows the mean recorded value of the last 20 steps as ``shown``.
    Returns the recorded value of every step.
    """
    parameters = list(parameters)
    opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps, floor))
    recorded: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for i in bar:
        out = step(i)
        loss, value = out if isinstance(out, tuple) else (out, out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(i)
        recorded.append(value.item())
        if len(recorded) % SHOW_EVERY == 0:
            bar.set_postfix({shown: f"{np.mean(recorded[-SHOW_EVERY:]):.4f}"})
    return recorded
