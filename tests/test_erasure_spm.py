"""SPM: a rank-1 membrane beside the UNet's transformer layers, trained with ESD's loss and latent anchoring."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from memories_lib.core.models import encode_prompts, hash_modules
from memories_lib.erasure import Membrane, SPMParams, resolve_params, spm_erase, spm_layer_names
from memories_lib.erasure.spm import anchor_prompts
from memories_lib.erasure.training import add_noise, sample_latents

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a triangle", "a red triangle"]
#: Cheap settings; a moderate anchoring strength, as erasing and anchoring pull hard against each
#: other in a random tiny model (its prompts' predictions differ about as much from each other as
#: from the empty prompt's).
TRAIN = dict(iterations=30, lr=1e-2, lr_warmup_steps=0, samples=2, ddim_steps=2, anchor_strength=10.0,
             preserve=["a star"], guides=["a shape", "a red shape"])


@pytest.fixture(scope="module")
def held_out(ldm):
    """Noisy latents of the concept, its prompts and the anchor "a star", none of them seen in training."""
    generator = torch.Generator().manual_seed(123)
    data = sample_latents(ldm, PROMPTS, 8, generator=generator, num_steps=2, guidance_scale=3.0)
    z_t, t, _ = add_noise(ldm, data.latents, generator)
    uncond, star = encode_prompts(ldm, ["", "a star"]).chunk(2)
    return z_t, t, data.embeds[data.index], uncond.expand(8, -1, -1), star.expand(8, -1, -1)


@pytest.fixture(scope="module")
def trained(ldm):
    return spm_erase(ldm, PROMPTS, SPMParams(**TRAIN), progress=False)


def _predict(unet, z_t, t, cond):
    with torch.no_grad():
        return unet(z_t, t, encoder_hidden_states=cond).sample


def test_spm_changes_its_layers_by_rank_one_and_the_erase_loss_falls(ldm, trained, held_out):
    """The defining property: each trained weight moves by a rank-1 matrix, nothing else moves, erasing works."""
    before, after = dict(ldm.unet.named_parameters()), dict(trained.unet.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"{name}.weight" for name in spm_layer_names(ldm.unet)}
    for name in changed:
        singular = torch.linalg.svdvals((after[name] - before[name]).double().flatten(1))
        assert singular[0] > 1e-4 and singular[1] <= 1e-4 * singular[0], (name, singular[:3])
    z_t, t, cond, uncond, _ = held_out
    e_c, e_0 = _predict(ldm.unet, z_t, t, cond), _predict(ldm.unet, z_t, t, uncond)
    target = e_0 - (e_c - e_0)
    erase_before = F.mse_loss(e_c, target)
    erase_after = F.mse_loss(_predict(trained.unet, z_t, t, cond), target)
    assert erase_after < 0.9 * erase_before
    assert len(trained.losses["erase"]) == TRAIN["iterations"]


def test_spm_latent_anchoring_keeps_the_anchors_predictions(ldm, trained, held_out):
    z_t, t, _, _, star = held_out
    loose = spm_erase(ldm, PROMPTS, SPMParams(**{**TRAIN, "anchor_strength": 0.0}), progress=False)
    base = _predict(ldm.unet, z_t, t, star)
    drift = {name: F.mse_loss(_predict(model.unet, z_t, t, star), base) for name, model in
             (("anchored", trained), ("loose", loose))}
    assert drift["anchored"] < 0.1 * drift["loose"]
    assert loose.losses["anchor"] == [0.0] * TRAIN["iterations"]


def test_spm_leaves_the_base_model_alone_and_is_deterministic(ldm):
    before = hash_modules(ldm.unet)
    settings = SPMParams(**{**TRAIN, "iterations": 2})
    runs = [spm_erase(ldm, PROMPTS, settings, progress=False) for _ in range(2)]
    other = spm_erase(ldm, PROMPTS, dataclasses.replace(settings, seed=1), progress=False)
    assert hash_modules(ldm.unet) == before
    assert hash_modules(runs[0].unet) == hash_modules(runs[1].unet) != hash_modules(other.unet)
    assert runs[0].losses == runs[1].losses
    assert not any(p.requires_grad for p in runs[0].unet.parameters())


@pytest.mark.parametrize("layer", [torch.nn.Linear(5, 7), torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)])
def test_membrane_forward_is_its_merged_rank_one_change(layer):
    membrane = Membrane(layer, rank=1, alpha=2.0, generator=torch.Generator().manual_seed(0))
    assert [name for name, _ in membrane.named_parameters()] == ["down", "up"]
    assert not membrane.up.any(), "the membrane starts as the identity change"
    with torch.no_grad():
        membrane.up.normal_(generator=torch.Generator().manual_seed(1))
        x = torch.randn(2, 5) if isinstance(layer, torch.nn.Linear) else torch.randn(2, 3, 9, 9)
        merged = layer(x) + membrane(x)
        delta = membrane.delta()
        layer.weight += delta
        assert torch.allclose(layer(x), merged, atol=1e-5)
    assert delta.shape == layer.weight.shape and torch.linalg.matrix_rank(delta.flatten(1)) == 1
    with pytest.raises(ValueError, match="Linear or Conv2d"):
        Membrane(torch.nn.LayerNorm(4), 1, 1.0, torch.Generator())


def test_spm_layers_are_every_linear_and_conv_of_the_transformer_blocks(ldm):
    names = spm_layer_names(ldm.unet)
    blocks = {n for n, m in ldm.unet.named_modules() if type(m).__name__ == "Transformer2DModel"}
    assert len(blocks) == 4 and len(names) == 12 * len(blocks)
    assert all(any(n.startswith(b + ".") for b in blocks) for n in names)
    leaves = {n.split("attentions.")[-1].split(".", 1)[-1].removeprefix("transformer_blocks.0.") for n in names}
    assert leaves == {"proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"} | {
        f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_spm_anchors_are_the_empty_prompt_the_preserved_and_the_guides():
    params = SPMParams(preserve=["a star", "a shape"], guides=["a shape", ""])
    assert anchor_prompts(params) == ["", "a star", "a shape"]


@pytest.mark.parametrize("bad, message", [
    ({"rank": 0}, "rank"),
    ({"iterations": 10, "lr_warmup_steps": 10}, "lr_warmup_steps"),
    ({"anchor_batch": 3, "batch_size": 2}, "multiple of batch_size"),
    ({"lr": 0.0}, "lr > 0"),
    ({"anchor_strength": -1.0}, "anchor_strength"),
])
def test_spm_rejects_bad_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_params("spm", bad)


def test_spm_needs_a_generation_per_prompt(ldm):
    with pytest.raises(ValueError, match="samples"):
        spm_erase(ldm, PROMPTS, SPMParams(**{**TRAIN, "samples": 1}), progress=False)
