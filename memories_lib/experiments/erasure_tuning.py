"""How strongly to erase: each method's trade-off in a world, and whether an erased model passes the usual test.

The usual test of an erasure is the UCE paper's object experiment (chapter "Erasing concepts"):
generate from prompts naming the erased concept and from prompts naming the other concepts of its
kind, and let the world's detector judge. :func:`prompt_test` runs it for one model and concept;
:class:`Goal` says when an erased model *passes*: the erased concept in fewer than 10% of its
generations, the other concepts of its kind within 5 points of the base model. The paper's claim
is read only on models that pass (chapter "Memory of an erased concept").

A :class:`Sweep` varies one setting of a method (its *strength*) with the others fixed; each value
is one erased model per concept. :func:`sweep_table` judges every point, so that a figure can draw
each method's trade-off (accuracy on the erased concept against accuracy on the others) with the
goal region, and the profile's settings can be chosen from it. A point's result goes through the
results store under a key made of the erased model's cache key (base weights, method, prompts,
every resolved parameter) and the test's settings, so ``memories tune-erasure`` computes the
sweeps once and the chapter reads them with ``compute=False`` without erasing anything.

The seeds of a label's generations are ``seed + 100 * (index of the label among the world's
concepts)``: the same for every model, so base and erased models are compared image for image,
and different for each label.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.judging import judged_generations_many
from ..core.models import LDM
from ..core.progress import tqdm
from ..core.store import Store, default_store
from ..core.tables import setting_text
from ..erasure import erase, erased_path, resolve_params
from ..worlds.base import World


@dataclass(frozen=True)
class Goal:
    """When an erased model passes the prompt test (shares in [0, 1]).

    erased_below:  the erased concept must appear in fewer than this share of its generations;
    others_within: the other concepts of its kind may lose at most this much against the base model.
    """

    erased_below: float = 0.10
    others_within: float = 0.05

    def met(self, erased: float, others: float, others_base: float) -> bool:
        """Whether a model with these accuracies passes (NaN never passes)."""
        if not all(math.isfinite(x) for x in (erased, others, others_base)):
            return False
        return erased < self.erased_below and others >= others_base - self.others_within

    def shortfall(self, erased: float, others: float, others_base: float) -> float:
        """How far a point is from the goal region: the erased share above its threshold plus the others'
        loss beyond the allowed drop (0 inside the region)."""
        excess = max(0.0, erased - self.erased_below + 1e-12)
        drop = max(0.0, others_base - self.others_within - others)
        return excess + drop

    def describe(self) -> str:
        return (f"the erased concept in fewer than {100 * self.erased_below:g}% of the generations that ask for it, "
                f"the other concepts of its kind within {100 * self.others_within:g} points of the base model")


#: The goal of the book (the UCE paper's object experiment reaches 2.6% erased, others 79.8% against 78.2%).
GOAL = Goal()


@dataclass(frozen=True)
class PromptTest:
    """The settings of one prompt test: generations per label, seed, sampling steps and guidance."""

    n: int
    seed: int
    num_steps: int
    guidance_scale: float

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"a prompt test needs n >= 1 generations per concept, got {self.n!r}")
        if int(self.num_steps) != self.num_steps or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}")

    @classmethod
    def of(cls, world: World, n: int, seed: int = 0) -> "PromptTest":
        """A test with the world's own sampling settings."""
        return cls(int(n), int(seed), int(world.profile.num_inference_steps), float(world.profile.guidance_scale))


def kind_members(world: World, concept: str) -> list[str]:
    """``concept`` and the other concepts of its kind, in the world's order."""
    rivals = set(world.rivals(concept))
    return [c for c in world.known_concepts() if c == concept or c in rivals]


def label_seed(world: World, label: str, seed: int) -> int:
    """The seed of the generations from ``label``'s prompts (see the module docstring)."""
    return int(seed) + 100 * list(world.known_concepts()).index(label)


def label_accuracies(world: World, ldm: LDM, concept: str, test: PromptTest, store: Store | None = None,
                     progress: bool = False) -> dict[str, float]:
    """The detector's accuracy on generations from each kind member's naming prompts."""
    detector = world.detector()
    kind = world.concept_kind(concept)
    labels = kind_members(world, concept)
    requests = [(world.naming_prompts(label, test.n), label_seed(world, label, test.seed)) for label in labels]
    judged = judged_generations_many(ldm, detector, requests, num_steps=test.num_steps,
                                     guidance_scale=test.guidance_scale, store=store, progress=progress)
    return {label: j.accuracy(kind, label) for label, j in zip(labels, judged)}


@dataclass(frozen=True)
class PromptTestResult:
    """A prompt test of one model and concept, beside the base model's on the same seeds and prompts."""

    concept: str
    accuracies: Mapping[str, float]
    base_accuracies: Mapping[str, float]
    goal: Goal = GOAL

    def _others(self, acc: Mapping[str, float]) -> float:
        values = [v for k, v in acc.items() if k != self.concept]
        return float(np.mean(values)) if values else float("nan")

    @property
    def erased(self) -> float:
        return float(self.accuracies[self.concept])

    @property
    def others(self) -> float:
        return self._others(self.accuracies)

    @property
    def erased_base(self) -> float:
        return float(self.base_accuracies[self.concept])

    @property
    def others_base(self) -> float:
        return self._others(self.base_accuracies)

    @property
    def passes(self) -> bool:
        return self.goal.met(self.erased, self.others, self.others_base)

    @property
    def largest_loss(self) -> tuple[str, float]:
        """The other concept that lost most against the base model, and how much (a share; "" if none)."""
        losses = {k: self.base_accuracies[k] - v for k, v in self.accuracies.items() if k != self.concept}
        if not losses:
            return "", float("nan")
        worst = max(losses, key=losses.get)
        return worst, float(losses[worst])

    def row(self) -> dict[str, Any]:
        worst, loss = self.largest_loss
        return {"erased": self.erased, "others": self.others, "erased_base": self.erased_base,
                "others_base": self.others_base, "passes": self.passes, "most_hurt": worst, "most_hurt_loss": loss}


def prompt_test(world: World, ldm: LDM, concept: str, test: PromptTest, store: Store | None = None,
                goal: Goal = GOAL, progress: bool = False) -> PromptTestResult:
    """The prompt test of ``ldm`` on ``concept`` and the base model's on the same prompts and seeds."""
    world.check_concepts([concept])
    acc = label_accuracies(world, ldm, concept, test, store, progress)
    base = label_accuracies(world, world.base_model(), concept, test, store, progress)
    return PromptTestResult(concept, acc, base, goal)


# --------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    """One setting of a method varied over ``values`` (weakest first), the others fixed.

    name:     how figures and tables call the curve, e.g. ``"uce"`` or ``"esd-x, lr 5e-4"``;
    strength: the parameter varied; values: its values, in order of increasing strength;
    fixed:    the method's other parameters (what is left out is the method's default).
    """

    name: str
    method: str
    strength: str
    values: tuple[Any, ...]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "fixed", dict(self.fixed))
        if not self.values:
            raise ValueError(f"sweep {self.name!r} has no values")
        if self.strength in self.fixed:
            raise ValueError(f"sweep {self.name!r} both varies and fixes {self.strength!r}")
        if any(b <= a for a, b in zip(self.values, self.values[1:])):
            raise ValueError(f"sweep {self.name!r}: the values of {self.strength!r} must increase, got {self.values}")

    def params(self, value: Any) -> dict[str, Any]:
        """The method's parameters at one point of the sweep."""
        return {**self.fixed, self.strength: value}

    def describe(self) -> str:
        """The method, the strength's values and the fixed settings: "uce: erase scale 0.01, 0.1; token all"."""
        fixed = "; " + ", ".join(f"{k.replace('_', ' ')} {setting_text(v)}" for k, v in self.fixed.items())
        values = ", ".join(map(setting_text, self.values))
        return f"{self.method}: {self.strength.replace('_', ' ')} {values}" + (fixed if self.fixed else "")

    @classmethod
    def from_mapping(cls, name: str, raw: Mapping[str, Any]) -> "Sweep":
        """A sweep from a profile's ``tuning`` entry: ``{method, strength, values, fixed}``."""
        unknown = sorted(set(raw) - {"method", "strength", "values", "fixed"})
        if unknown:
            raise ValueError(f"tuning sweep {name!r}: unknown key(s) {unknown}; keys: method, strength, values, fixed")
        missing = [k for k in ("method", "strength", "values") if k not in raw]
        if missing:
            raise ValueError(f"tuning sweep {name!r} needs {missing}")
        return cls(name, str(raw["method"]), str(raw["strength"]), tuple(raw["values"]), dict(raw.get("fixed") or {}))


def profile_sweeps(world: World, names: Sequence[str] | None = None) -> list[Sweep]:
    """The sweeps of the profile's ``parameters.tuning`` (all, or those named), checked before any work."""
    raw = world.profile.parameters.get("tuning") or {}
    sweeps = [Sweep.from_mapping(name, spec) for name, spec in raw.items()]
    if names is not None:
        known = {s.name for s in sweeps}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"the profile {world.profile.name!r} has no tuning sweep(s) {unknown}; it has {sorted(known)}")
        sweeps = [s for s in sweeps if s.name in names]
    for sweep in sweeps:  # every point's parameters valid for every concept
        for concept in world.profile.concepts:
            for value in sweep.values:
                resolve_params(sweep.method, sweep.params(value), world.concept_prompts(concept))
    return sweeps


def _point_parts(world: World, method: str, concept: str, params: Mapping[str, Any], test: PromptTest) -> dict:
    base = world.base_model()
    return {
        "kind": "erasure/prompt-test",
        "erased_model": erased_path(base, method, world.concept_prompts(concept), params).name,
        "base": base.weights_hash(),
        "detector": world.detector().identity(),
        "labels": {label: world.naming_prompts(label, test.n) for label in kind_members(world, concept)},
        "test": dataclasses.asdict(test),
    }


def tested_point(world: World, method: str, concept: str, params: Mapping[str, Any], test: PromptTest,
                 store: Store | None = None, compute: bool = True, progress: bool = False) -> PromptTestResult | None:
    """The prompt test of the model ``method`` makes with ``params`` for ``concept`` (None when absent and
    ``compute`` is off). Computing erases (cached like every erased model) and judges."""
    store = store or default_store()
    parts = _point_parts(world, method, concept, params, test)
    entry = store.get(store.key(**parts))
    if entry is None:
        if not compute:
            return None

        def run():
            model = erase(world.base_model(), method, world.concept_prompts(concept), params, progress=progress)
            result = prompt_test(world, model.load(world.load_model), concept, test, store)
            return {}, {"accuracies": dict(result.accuracies), "base_accuracies": dict(result.base_accuracies),
                        "erase_seconds": model.info.get("seconds")}

        entry = store.get_or_compute(parts, run)
    return PromptTestResult(concept, entry.meta["accuracies"], entry.meta["base_accuracies"])


def sweep_table(world: World, sweeps: Iterable[Sweep], concepts: Sequence[str], test: PromptTest,
                store: Store | None = None, compute: bool = True, progress: bool = True,
                goal: Goal = GOAL) -> pd.DataFrame:
    """One row per sweep, value and concept: the prompt test's accuracies and whether the goal is met.

    Columns: sweep, method, strength, value, step (0 = weakest), concept, erased, others, erased_base,
    others_base, passes, most_hurt (the other concept that lost most) and most_hurt_loss. With ``compute``
    off, points not in the store are left out.
    """
    points = [(s, i, v, c) for s in sweeps for i, v in enumerate(s.values) for c in concepts]
    rows = []
    for sweep, step, value, concept in tqdm(points, desc="erasure sweeps", disable=not progress or not compute):
        result = tested_point(world, sweep.method, concept, sweep.params(value), test, store, compute=compute)
        if result is None:
            continue
        result = dataclasses.replace(result, goal=goal)
        rows.append({"sweep": sweep.name, "method": sweep.method, "strength": sweep.strength, "value": value,
                     "step": step, "concept": concept, **result.row()})
    columns = ["sweep", "method", "strength", "value", "step", "concept", "erased", "others", "erased_base",
               "others_base", "passes", "most_hurt", "most_hurt_loss"]
    return pd.DataFrame(rows, columns=columns)


def closest_on_every_training(points: Mapping[Any, pd.DataFrame], goal: Goal = GOAL) -> Any:
    """The sweep value (index of every table in ``points``, one table per training) whose largest shortfall
    over the trainings is smallest; ties broken by the higher mean accuracy on the others."""
    values = [v for v in next(iter(points.values())).index if all(v in t.index for t in points.values())]
    if not values:
        raise ValueError("no sweep value was measured on every training")

    def rank(v: Any) -> tuple[float, float]:
        rows = [t.loc[v] for t in points.values()]
        worst = max(goal.shortfall(r["erased"], r["others"], r["others_base"]) for r in rows)
        return worst, -float(np.mean([r["others"] for r in rows]))

    return min(values, key=rank)


def sweep_points(tables: Mapping[int, pd.DataFrame], sweep: str, concept: str) -> dict[int, pd.DataFrame]:
    """Each training's points of one sweep and concept (rows of :func:`sweep_table`), indexed by the sweep's value."""
    return {s: t[(t["sweep"] == sweep) & (t["concept"] == concept)].set_index("value") for s, t in tables.items()}


def sweep_summary(tables: Mapping[int, pd.DataFrame], sweeps: Sequence[Sweep], concepts: Sequence[str],
                  chosen: Callable[[Sweep, str], Any] = lambda sweep, concept: None,
                  goal: Goal = GOAL) -> pd.DataFrame:
    """Where each sweep meets the goal, per concept, over several trainings of a world.

    ``tables``: one :func:`sweep_table` per training seed; ``chosen(sweep, concept)``: the profile's setting
    on that sweep (None when it is not a point of it). One row per (sweep, concept), indexed so, with the
    columns ``measured`` (some value of the sweep was measured on every training), ``met`` (one of them
    meets the goal on every training), ``passing`` (those values), ``closest`` (the value closest to the
    goal on every training when none meets it, else None) and ``at_setting`` (the profile's setting passes,
    per training in the order of ``tables``; None when it is off the sweep or not measured on every one).
    """
    rows = []
    for sweep in sweeps:
        for concept in concepts:
            per = sweep_points(tables, sweep.name, concept)
            values = [v for v in sweep.values if all(v in p.index for p in per.values())]
            passing = [v for v in values if all(goal.met(*p.loc[v, ["erased", "others", "others_base"]])
                                                for p in per.values())]
            setting = chosen(sweep, concept)
            at_setting = ([goal.met(*p.loc[setting, ["erased", "others", "others_base"]]) for p in per.values()]
                          if setting is not None and setting in values else None)
            rows.append({"sweep": sweep.name, "concept": concept, "setting": setting, "measured": bool(values),
                         "met": bool(passing), "passing": passing, "at_setting": at_setting,
                         "closest": closest_on_every_training(per, goal) if values and not passing else None})
    columns = ["sweep", "concept", "setting", "measured", "met", "passing", "at_setting", "closest"]
    table = pd.DataFrame(rows, columns=columns, dtype=object)  # None stays None, a setting keeps its type
    return table.astype({"measured": bool, "met": bool}).set_index(["sweep", "concept"])


# --------------------------------------------------------------------------- the tuning run


def tuning_images(world: World) -> int:
    """Generations per concept of a sweep point: the profile's ``images_per_concept`` (else 8 x ``num_images``),
    the number chapter 3 judges every erased model with, so that its table and the sweeps share their tests."""
    parameters = world.profile.parameters
    return int(parameters.get("images_per_concept") or 8 * int(parameters.get("num_images", 8)))


def training_worlds(world: World, seeds: Sequence[int] | None) -> dict[int, World]:
    """``world`` trained with each of ``seeds`` (None: ``world`` itself), by training seed (see ``worlds.retrained``)."""
    from ..worlds import open_world, retrained

    own = world.training_seed()
    if seeds is None or list(seeds) == [own]:
        return {0 if own is None else own: world}
    if own is None:
        raise ValueError(f"the {world.kind} world is not trained by this project: it has no training seeds to vary")
    return {int(s): world if int(s) == own else open_world(retrained(world.profile, int(s))) for s in seeds}


def run_tuning(world: World, seeds: Sequence[int] | None = None, sweep_names: Sequence[str] | None = None,
               concepts: Sequence[str] | None = None, n: int | None = None, store: Store | None = None,
               progress: bool = True) -> dict[int, pd.DataFrame]:
    """Every point of the profile's sweeps on ``world`` trained with each of ``seeds`` (None: the profile's own).

    Checks the sweeps, concepts and ``n`` before any work; trains a world that is not trained yet.
    Returns one table (:func:`sweep_table`) per training seed.
    """
    sweeps = profile_sweeps(world, sweep_names)
    if not sweeps:
        raise ValueError(f"the profile {world.profile.name!r} defines no tuning sweeps (parameters.tuning)")
    concepts = world.check_concepts(concepts or world.profile.concepts)
    test = PromptTest.of(world, n or tuning_images(world), world.profile.seed)
    tables = {}
    for seed, w in training_worlds(world, seeds).items():
        if progress:
            print(f"[memories] erasure sweeps on the world trained with seed {seed}", flush=True)
        w.base_model(progress=progress)
        tables[seed] = sweep_table(w, sweeps, concepts, test, store, compute=True, progress=progress)
    return tables
