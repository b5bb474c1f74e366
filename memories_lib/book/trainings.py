"""How far a chapter's numbers move when the world is trained again with another seed.

A world that this project trains itself (the shapes world) is one draw of its training: CPU
kernels differ by instruction set, training amplifies the difference, and another machine
trains another world from the same config. :func:`compare_trainings` makes that visible on
one machine: it writes a copy of the profile whose only change is ``world.training.seed``,
executes the chosen chapters with each copy, and collects every number the chapters glue.
The comparison is written to ``_executed/trainings/<profile>.json`` beside the executed copies;
the chapters read it (:func:`load_comparison`) and show it only when it was made from their
own profile (the same settings but the training seed).

    memories trainings --profile mini --seeds 1 --chapters 02_embedded_world 03_erasure
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from ..core.profile import Profile, load_profile, profile_path, thaw
from ..core.store import content_key
from ..worlds import open_world
from . import execute
from .parameters import ParameterError
from .toc import BookError, find_root, resolve_chapter

#: Where the comparisons and their executed chapters go, under the book's root.
FOLDER = Path("_executed") / "trainings"


def _training(profile: Profile) -> dict[str, Any]:
    options = thaw(profile.world.options)
    training = options.get("training")
    if not isinstance(training, Mapping):
        raise BookError(
            f"profile {profile.name!r}: its world ({profile.world.kind}) is not trained by this project "
            "(no world.training section), so there is no training seed to vary"
        )
    return dict(training)


def fingerprint(profile: Profile) -> str:
    """A key of everything in ``profile`` except its name, description and training seed, with the
    world's training config resolved (a changed preset default makes a new fingerprint)."""
    options = thaw(profile.world.options)
    world = open_world(profile)
    training = dict(getattr(world, "training_config", None) or options.get("training") or {})
    training.pop("seed", None)
    options["training"] = training
    return content_key(
        model=profile.model, world_kind=profile.world.kind, world=options, seed=profile.seed,
        concepts=list(profile.concepts), erased_models={k: [v.method, thaw(v.params)] for k, v in profile.erased_models.items()},
        parameters=thaw(profile.parameters),
    )


def training_seed(profile: Profile) -> int:
    """The training seed of ``profile``'s world (the preset's when the profile does not set it)."""
    return int(open_world(profile).training_config["seed"])


def variant(profile: str | Path, seed: int, folder: Path) -> Path:
    """Write ``profile`` with ``world.training.seed = seed`` to ``folder`` and return the file."""
    source = profile_path(profile)
    raw = yaml.safe_load(source.read_text())
    _training(load_profile(source))  # a world without training fails here
    raw["world"]["training"] = {**raw["world"]["training"], "seed": int(seed)}
    raw["name"] = f"{raw['name']}-train{seed}"
    raw["description"] = f"{raw.get('description', '')} (trained with seed {seed})".strip()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{raw['name']}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def glued_values(notebook: Path) -> dict[str, float]:
    """The numbers an executed notebook glued (``myst_nb.glue``), by name; text values are left out."""
    values: dict[str, float] = {}
    for cell in json.loads(Path(notebook).read_text())["cells"]:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if not record:
                continue
            text = output.get("data", {}).get(record["mime_prefix"] + "text/plain")
            try:
                value = ast.literal_eval(text) if isinstance(text, str) else None
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values[record["name"]] = float(value)
    return values


def compare_trainings(
    profile: str | Path,
    seeds: Iterable[int],
    chapter_names: Sequence[str],
    root: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Execute ``chapter_names`` with ``profile`` and with its copies trained with ``seeds``; return the JSON.

    The profile's own training is included (its executed chapters are reused from the book's
    ``_executed/`` when present, else executed). Numbers glued by a chapter with every training
    are kept: ``{"chapters": {chapter: {name: {seed: value}}}, "seeds": [...], ...}``.
    """
    root = find_root() if root is None else Path(root).resolve()
    base = load_profile(profile)
    own_seed = training_seed(base)
    seeds = [int(s) for s in seeds if int(s) != own_seed]
    if not seeds:
        raise ParameterError(f"give at least one training seed other than the profile's own ({own_seed})")
    chapters = [resolve_chapter(root, name) for name in chapter_names]  # unknown names fail before any work
    out_dir = root / FOLDER / base.name
    runs: dict[int, str | Path] = {own_seed: profile, **{s: variant(profile, s, out_dir) for s in seeds}}
    values: dict[str, dict[str, dict[str, float]]] = {}
    for seed, prof in runs.items():
        for chapter in chapters:
            output = out_dir / f"seed{seed}" / f"{chapter.name}.ipynb"
            if progress:
                print(f"[memories] training seed {seed}: executing {chapter.name}", flush=True)
            execute.execute_chapter(chapter, prof, output=output, progress=progress)
            for name, value in glued_values(output).items():
                values.setdefault(chapter.name, {}).setdefault(name, {})[str(seed)] = value
    complete = {
        chapter: {name: by_seed for name, by_seed in names.items() if len(by_seed) == len(runs)}
        for chapter, names in values.items()
    }
    result = {
        "profile": base.name,
        "fingerprint": fingerprint(base),
        "seeds": [str(s) for s in runs],
        "chapters": complete,
    }
    path = root / FOLDER / f"{base.name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def load_comparison(profile: str | Path | Profile, root: str | Path = ".") -> dict[str, Any] | None:
    """The training comparison made from ``profile`` under ``root``, or None when there is none (or it is stale)."""
    p = profile if isinstance(profile, Profile) else load_profile(profile)
    path = Path(root) / FOLDER / f"{p.name}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("fingerprint") == fingerprint(p) else None


def values_by_training(comparison: Mapping[str, Any], chapter: str, names: Mapping[str, str]):
    """A table of glued numbers across trainings: a row per ``names`` item (glue name -> label), a column per seed.

    Numbers a chapter did not glue with every training are left out (the comparison keeps only
    complete ones); the column ``spread`` is the largest minus the smallest value of a row.
    """
    import pandas as pd

    glued = comparison["chapters"].get(chapter, {})
    rows = {label: {f"seed {s}": glued[name][s] for s in comparison["seeds"]}
            for name, label in names.items() if name in glued}
    table = pd.DataFrame.from_dict(rows, orient="index")
    if not table.empty:
        table["spread"] = table.max(axis=1) - table.min(axis=1)
    return table


def missing_comparison_text(profile: Profile, chapter: str) -> str:
    """What a chapter says when no comparison across trainings was made for its profile."""
    return (
        f"This build has no comparison across trainings of the `{profile.name}` world. "
        f"`memories trainings --profile {profile.name} --seeds 1 --chapters {chapter}` trains the world again "
        "with another seed, executes this chapter with it, and this section then shows both trainings "
        "side by side."
    )
