"""Profiles: the shipped ones load; unknown names and keys are errors; a profile is frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from memories_lib.core.profile import PROFILES_DIR, ProfileError, list_profiles, load_profile

TINY = PROFILES_DIR / "tiny.yaml"


def _write(tmp_path: Path, raw: dict, name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _tiny_raw() -> dict:
    return yaml.safe_load(TINY.read_text())


def test_list_profiles_matches_the_shipped_files():
    names = list_profiles()
    assert "tiny" in names
    assert names == sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", list_profiles())
def test_every_shipped_profile_loads(name):
    profile = load_profile(name)
    assert profile.name == name, "a profile's name must match its file name"
    assert profile.description.strip() and profile.world.kind
    assert profile.num_inference_steps > 0 and isinstance(profile.interpret, bool)
    assert isinstance(profile.torch_dtype(), torch.dtype)
    assert profile.resolve_device() in ("cpu", "cuda") or profile.resolve_device().startswith("cuda:")
    for key in profile.parameters:
        assert key.isidentifier(), f"profile {name}: parameter {key!r} is not a notebook variable name"
    for entry_name, entry in profile.erased_models.items():
        assert entry.name == entry_name and entry.method


def test_load_by_path_gives_the_same_profile():
    assert load_profile(TINY) == load_profile("tiny")


def test_unknown_profile_names_the_shipped_ones():
    with pytest.raises(ProfileError, match="unknown profile 'no-such-world'") as info:
        load_profile("no-such-world")
    assert "tiny" in str(info.value)


def test_unknown_top_level_key_is_an_error(tmp_path):
    raw = _tiny_raw() | {"num_infrence_steps": 3}
    with pytest.raises(ProfileError, match="num_infrence_steps"):
        load_profile(_write(tmp_path, raw))


def test_unknown_model_key_is_an_error(tmp_path):
    raw = _tiny_raw()
    raw["model"] = dict(raw["model"], weights="x")
    with pytest.raises(ProfileError, match="custom.yaml: model: unknown key.*weights"):
        load_profile(_write(tmp_path, raw))


def test_missing_key_is_an_error(tmp_path):
    raw = _tiny_raw()
    del raw["model"]["num_inference_steps"]
    with pytest.raises(ProfileError, match="missing key.*num_inference_steps"):
        load_profile(_write(tmp_path, raw))
    raw = _tiny_raw()
    del raw["world"]
    with pytest.raises(ProfileError, match="missing key.*world"):
        load_profile(_write(tmp_path, raw))


@pytest.mark.parametrize(
    "section, change, message",
    [
        ("model", {"dtype": "int8"}, "dtype must be one of"),
        ("model", {"num_inference_steps": 0}, "positive integer"),
        ("model", {"guidance_scale": -1}, "guidance_scale"),
        (None, {"interpret": "yes"}, "interpret must be true or false"),
        (None, {"world": {"training": "tiny"}}, "world must be a mapping with a 'kind'"),
        (None, {"erased_models": {"uce": [1, 2]}}, "erased_models.uce must be a mapping"),
        (None, {"erased_models": {"x": {"method": "uce", "lamb": 1}}}, "erased_models.x.*under 'params'"),
    ],
)
def test_invalid_values_are_errors(tmp_path, section, change, message):
    raw = _tiny_raw()
    if section:
        raw[section] = dict(raw[section], **change)
    else:
        raw.update(change)
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, raw))


def test_erased_models_name_their_method_or_are_named_after_it(tmp_path):
    raw = _tiny_raw()
    del raw["book_models"]  # it names tiny's own models
    raw["erased_models"] = {
        "esd-x": {"iterations": 3},
        "esd-x-strong": {"method": "esd-x", "params": {"lr": 0.01}},
        "published": {"method": "checkpoint", "params": {"paths": {"triangle": "/x.pt"}}},
    }
    profile = load_profile(_write(tmp_path, raw))
    assert list(profile.erased_models) == ["esd-x", "esd-x-strong", "published"]
    assert profile.erased_models["esd-x"].method == "esd-x"
    assert dict(profile.erased_models["esd-x"].params) == {"iterations": 3}
    assert profile.erased_models["esd-x-strong"].method == "esd-x"
    assert profile.erased_models["published"].params["paths"]["triangle"] == "/x.pt"


def test_invalid_yaml_is_an_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)


def test_profile_is_frozen():
    profile = load_profile("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.model.num_inference_steps = 1
    with pytest.raises(TypeError):
        profile.parameters["num_steps"] = 1
    with pytest.raises(TypeError):
        profile.world.options["base_model"] = "trained"
    with pytest.raises(TypeError):
        profile.erased_models["esd-x"].params["lr"] = 1.0
    assert isinstance(profile.concepts, tuple)
