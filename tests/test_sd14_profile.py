"""The shipped ``sd14`` profile, read from a tiny world laid out as it expects under ``$MEMORIES_SD14``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories_lib.core.profile import ProfileError, load_profile
from memories_lib.experiments.models import book_pairs, check_models, load_model
from memories_lib.worlds import WorldError, open_world
from sd_world import SD14_CONCEPTS, SD14_IMAGENET, STYLE_CLASSES, build_sd14_layout


@pytest.fixture(scope="module")
def sd14_layout(tmp_path_factory) -> Path:
    return build_sd14_layout(tmp_path_factory.mktemp("sd14-layout"))


@pytest.fixture()
def sd14(sd14_layout, monkeypatch):
    monkeypatch.setenv("MEMORIES_SD14", str(sd14_layout))
    return open_world("sd14")


def test_the_profile_names_its_folder_by_an_environment_variable(monkeypatch):
    monkeypatch.delenv("MEMORIES_SD14")
    with pytest.raises(ProfileError, match=r"world.base_model uses the environment variable MEMORIES_SD14, which is not set"):
        load_profile("sd14")
    monkeypatch.setenv("MEMORIES_SD14", "/data/sd14")
    profile = load_profile("sd14")
    assert profile.world.options["base_model"] == "/data/sd14/stable-diffusion-v1-4"
    assert profile.erased_models["esd"].params["paths"]["nudity"] == "/data/sd14/checkpoints/esd/nudity.pt"
    assert list(profile.concepts) == list(SD14_CONCEPTS)


def test_a_missing_folder_is_named_when_the_world_opens(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMORIES_SD14", str(tmp_path))
    with pytest.raises(WorldError, match="stable-diffusion-v1-4"):
        open_world("sd14")


def test_the_sd14_world_opens_with_every_judge_and_erased_model(sd14):
    assert sd14.known_concepts() == tuple(SD14_CONCEPTS)
    assert sd14.concept_kind("nudity") == "nudity" and sd14.concept_prompts("nudity").guides == ("",)
    assert sd14.concept_prompts("van_gogh").guides == ("art",)
    heads = sd14.detector()._heads
    assert set(heads) == {"nudity", "object", "style"}
    objects = dict(zip(heads["object"].concepts, heads["object"].indices))
    assert objects == {c: (i,) for c, i in SD14_IMAGENET.items()}
    assert heads["style"].indices == ((STYLE_CLASSES.index("vincent-van-gogh"),),)  # named in the profile
    pairs = book_pairs(sd14)
    assert ("esd", "nudity") in pairs and ("salun", "church") in pairs and ("salun", "van_gogh") not in pairs
    for name in sd14.profile.erased_models:
        concepts = [c for n, c in pairs if n == name]
        check_models(sd14, [name], concepts, vanilla=False)
    base = sd14.base_model()
    esd = load_model(sd14, "esd", "nudity")  # a published full-UNet .pt
    assert not torch.equal(esd.unet.conv_in.weight, base.unet.conv_in.weight)
    adv = load_model(sd14, "advunlearn", "church")  # a published text encoder folder
    assert torch.equal(adv.unet.conv_in.weight, base.unet.conv_in.weight)
    assert adv.weights_hash() != base.weights_hash()
    changed = [n for n, w in adv.text_encoder.state_dict().items() if not torch.equal(w, base.text_encoder.state_dict()[n])]
    assert changed and all(n.endswith("final_layer_norm.bias") for n in changed)


def test_an_erased_set_is_generated_from_the_nudity_csv(sd14):
    images = sd14.erased_set("nudity", 2, 0, filtered=False, progress=False)
    assert images.images.shape == (2, 3, 32, 32) and all("nudity" in p for p in images.prompts)


def test_a_missing_checkpoint_is_named_before_any_work(sd14_layout, monkeypatch, tmp_path):
    import shutil

    copy = tmp_path / "sd14"
    shutil.copytree(sd14_layout, copy)
    (copy / "checkpoints" / "fmn" / "tench.pt").unlink()
    shutil.rmtree(copy / "checkpoints" / "advunlearn" / "church_unlearned")
    monkeypatch.setenv("MEMORIES_SD14", str(copy))
    world = open_world("sd14")
    with pytest.raises(ValueError, match=r"'fmn' for 'tench': the checkpoint .*fmn/tench.pt does not exist"):
        check_models(world, ["fmn"], ["tench"], vanilla=False)
    with pytest.raises(ValueError, match=r"'advunlearn' for 'church': the text encoder folder .*church_unlearned"):
        check_models(world, ["advunlearn"], ["church"], vanilla=False)
