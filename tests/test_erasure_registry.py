"""The erasure registry's contract, run on every registered method with a tiny random model.

A new method is tested the moment it is registered: it needs an entry in ``RUN`` (cheap
settings for a tiny model), or this battery fails and says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.core.models import load_ldm
from memories_lib.erasure import METHODS, erase, get_method, resolve_params

CONCEPT = ConceptPrompts("triangle", ("a triangle", "a red triangle"), ("a shape", "a red shape"), ("a star",))


def _checkpoint(ldm, folder: Path) -> dict:
    path = folder / "triangle.pt"
    torch.save({k: v + 0.01 for k, v in ldm.unet.state_dict().items()}, path)
    return {"paths": {"triangle": str(path)}}


#: Cheap settings per method; a callable gets (ldm, tmp folder). measure_ratio for uce-debias.
RUN = {
    "uce": {},
    "uce-moderate": {},
    "uce-debias": {"attributes": ["red", "blue"], "measure": "planted", "max_iterations": 1},
    "esd-x": {"iterations": 1, "ddim_steps": 2, "lr": 1e-3},
    "esd-u": {"iterations": 1, "ddim_steps": 2, "lr": 1e-3},
    "checkpoint": _checkpoint,
    "rece": {},
    "salun": {"epochs": 1, "batch_size": 2, "forget_samples": 2, "retain_samples": 2, "sample_steps": 2, "lr": 1e-3},
    "erasediff": {"epochs": 1, "batch_size": 2, "forget_samples": 2, "retain_samples": 2, "sample_steps": 2,
                  "inner_steps": 1, "lr": 1e-3},
    "scissorhands": {"epochs": 1, "batch_size": 2, "forget_samples": 2, "retain_samples": 2, "sample_steps": 2,
                     "prune_batches": 1, "lr": 1e-3},
    "spm": {"iterations": 1, "lr_warmup_steps": 0, "samples": 2, "ddim_steps": 2, "lr": 1e-3},
    "advunlearn": {"iterations": 2, "warmup_iterations": 1, "attack_steps": 1, "samples": 2, "ddim_steps": 2,
                   "retain_batch": 1, "lr": 1e-3},
    "fmn": {"iterations": 1, "lr": 1e-3, "num_images": 2, "sample_steps": 2},
    "ac": {"iterations": 1, "lr": 1e-3, "num_images": 2, "sample_steps": 2, "batch_size": 2},
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "cache"))


def test_every_method_has_battery_settings():
    missing = sorted(set(METHODS) - set(RUN))
    assert not missing, f"add cheap settings for {missing} to RUN in {__file__}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_declares_dataclass_parameters_with_defaults(name):
    method = get_method(name)
    assert method.name == name and method.description
    assert dataclasses.is_dataclass(method.params) and method.params.__dataclass_params__.frozen
    assert (method.compute is None) != (method.load is None), "a method computes or loads, not both"
    required = set(getattr(method.params, "REQUIRED", ()))
    defaults = method.defaults()
    assert set(defaults) == {f.name for f in dataclasses.fields(method.params)}
    assert required <= set(defaults)
    if not required:
        resolved = resolve_params(name, {}, CONCEPT)
        assert set(resolved) == set(defaults)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_refuses_unknown_parameters(name):
    with pytest.raises(ValueError, match=f"unknown parameter.*no_such_setting.*{name}"):
        resolve_params(name, {"no_such_setting": 1}, CONCEPT)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_changes_its_parameter_set_and_nothing_else(name, ldm, tmp_path):
    settings = RUN[name](ldm, tmp_path) if callable(RUN[name]) else RUN[name]
    measure = (lambda unet: {"red": 0.9, "blue": 0.1}) if name == "uce-debias" else None
    method = get_method(name)
    erased = erase(ldm, name, CONCEPT, settings, measure_ratio=measure, progress=False).load(load_ldm)
    allowed = set(method.changes(ldm, resolve_params(name, settings, CONCEPT)))
    assert allowed, f"{name} declares no parameters it may change"
    changed = set()
    for component in ("unet", "text_encoder", "vae"):
        before = dict(getattr(ldm, component).named_parameters())
        after = dict(getattr(erased, component).named_parameters())
        assert before.keys() == after.keys()
        changed |= {f"{component}.{k}" for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    assert changed, f"{name} changed nothing"
    assert changed <= allowed, f"{name} changed parameters outside its set: {sorted(changed - allowed)[:5]}"
    # the base model is never modified in place
    assert ldm.weights_hash() == load_ldm(ldm.source).weights_hash()


@pytest.mark.parametrize("method", ["spm", "advunlearn"])
def test_too_few_training_samples_for_the_prompts_are_refused_before_any_work(method):
    with pytest.raises(ValueError, match=r"samples \(1\) must be at least the number of concept prompts \(2\)"):
        resolve_params(method, {"samples": 1}, CONCEPT)
    assert resolve_params(method, {"samples": 2}, CONCEPT)["samples"] == 2
