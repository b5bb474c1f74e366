"""AdvUnlearn: the text encoder trained with ESD's loss on adversarial prefix prompts, plus a retain term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memories_lib.core.models import hash_modules
from memories_lib.core.tokenizer import tokenize
from memories_lib.erasure import AdvUnlearnParams, advunlearn_erase, advunlearn_parameter_names, resolve_params
from memories_lib.erasure.advunlearn import adversarial_prefix, encode_token_embeddings, with_prefix
from memories_lib.erasure.training import add_noise, sample_latents

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a triangle"
#: Cheap settings: a few attacked iterations after a short warm-up.
TRAIN = dict(iterations=6, warmup_iterations=3, attack_steps=3, lr=1e-3, samples=2, ddim_steps=2,
             retain_batch=2, preserve=["a star"])


@pytest.fixture(scope="module")
def trained(ldm):
    return advunlearn_erase(ldm, [PROMPT], AdvUnlearnParams(**TRAIN), progress=False)


def _embeds(ldm, prompt=PROMPT):
    ids = tokenize(ldm.tokenizer, [prompt])
    return ids, ldm.text_encoder.get_input_embeddings().weight.detach()[ids]


def test_the_attack_finds_a_prefix_that_brings_the_concept_back(ldm):
    """The defining property of the inner step: against an erased text encoder, the adversarial prefix makes
    the model's prediction for the concept much closer to the original model's than the plain prompt does."""
    erased = advunlearn_erase(ldm, [PROMPT], AdvUnlearnParams(**{**TRAIN, "iterations": 30, "warmup_iterations": 30}),
                              progress=False).text_encoder  # plain ESD on the text encoder, no attack
    ids, tokens = _embeds(ldm)
    generator = torch.Generator().manual_seed(5)
    data = sample_latents(ldm, [PROMPT], 4, generator=generator, num_steps=2, guidance_scale=3.0)

    def batch(n):
        z_t, t, _ = add_noise(ldm, data.latents[:n], generator)
        with torch.no_grad():
            return z_t, t, ldm.unet(z_t, t, encoder_hidden_states=data.embeds[data.index[:n]]).sample

    def objective(embeds, held_out):
        z_t, t, target = held_out
        with torch.no_grad():
            cond = encode_token_embeddings(erased, ids, embeds).expand(len(z_t), -1, -1)
            return F.mse_loss(ldm.unet(z_t, t, encoder_hidden_states=cond).sample, target)

    held_out = batch(4)
    init = ldm.text_encoder.get_input_embeddings().weight.detach()[[7]]
    prefix, trace = adversarial_prefix(ldm.unet, erased, ids, tokens, init, (batch(1) for _ in range(30)), lr=1e-3)
    assert prefix.shape == init.shape and len(trace) == 30
    plain, start, attacked = (objective(e, held_out)
                              for e in (tokens, with_prefix(tokens, init), with_prefix(tokens, prefix)))
    assert attacked < 0.6 * start and attacked < 0.6 * plain


def test_advunlearn_trains_only_the_text_encoder_layers(ldm, trained):
    """The other defining property: only the text encoder changes (its transformer layers and final norm)."""
    unet_before = hash_modules(ldm.unet)
    before, after = dict(ldm.text_encoder.named_parameters()), dict(trained.text_encoder.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= set(trained.trained) == set(advunlearn_parameter_names(ldm.text_encoder))
    assert not any(name.startswith("embeddings.") for name in changed)
    assert hash_modules(ldm.unet) == unet_before and all(p.grad is None for p in ldm.unet.parameters())
    assert len(trained.attacks) == TRAIN["iterations"] - TRAIN["warmup_iterations"]
    assert all(len(trained.losses[k]) == TRAIN["iterations"] for k in ("loss", "erase", "retain"))
    assert all(value > 0 for value in trained.losses["retain"][1:]), "the retain term is part of the loss"
    assert not any(p.requires_grad for p in trained.text_encoder.parameters())


def test_advunlearn_is_deterministic_and_leaves_the_base_alone(ldm, trained):
    before = hash_modules(ldm.text_encoder)
    again = advunlearn_erase(ldm, [PROMPT], AdvUnlearnParams(**TRAIN), progress=False)
    other = advunlearn_erase(ldm, [PROMPT], AdvUnlearnParams(**{**TRAIN, "seed": 1}), progress=False)
    assert hash_modules(ldm.text_encoder) == before
    assert hash_modules(again.text_encoder) == hash_modules(trained.text_encoder) != hash_modules(other.text_encoder)
    assert again.attacks == trained.attacks


def test_advunlearn_without_prompts_to_keep_drops_the_retain_term(ldm):
    params = AdvUnlearnParams(**{**TRAIN, "preserve": [], "iterations": 2, "warmup_iterations": 1,
                                 "attack_method": "fast_at", "attack_init": "latest"})
    result = advunlearn_erase(ldm, [PROMPT, "a red triangle"], params, progress=False)
    assert result.losses["retain"] == [0.0, 0.0] and result.losses["loss"] == result.losses["erase"]


def test_the_prefix_goes_after_the_start_token_and_keeps_the_length(ldm):
    ids, tokens = _embeds(ldm, "a red triangle")
    prefix = torch.randn(2, tokens.shape[-1])
    out = with_prefix(tokens, prefix)
    length = tokens.shape[1]
    assert out.shape == tokens.shape
    assert torch.equal(out[0, 0], tokens[0, 0]) and torch.equal(out[0, 1:3], prefix)
    assert torch.equal(out[0, 3:], tokens[0, 1:length - 2])
    with pytest.raises(ValueError, match="does not fit"):
        with_prefix(tokens, torch.randn(length - 1, tokens.shape[-1]))


def test_encoding_token_embeddings_is_the_text_encoder_and_passes_gradients(ldm):
    ids, tokens = _embeds(ldm, "a red triangle")
    with torch.no_grad():
        encoded = encode_token_embeddings(ldm.text_encoder, ids, tokens)
        assert torch.allclose(encoded, ldm.text_encoder(ids)[0], atol=1e-6)
    prefix = torch.zeros(1, tokens.shape[-1], requires_grad=True)
    encode_token_embeddings(ldm.text_encoder, ids, with_prefix(tokens, prefix)).sum().backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    assert all(p.grad is None for p in ldm.text_encoder.parameters())


def test_advunlearn_components_select_their_layers(ldm):
    names = {c: advunlearn_parameter_names(ldm.text_encoder, c) for c in ("all", "attn", "ffn")}
    assert "final_layer_norm.weight" in names["all"] and not any("embeddings" in n for n in names["all"])
    assert names["attn"] and all(".self_attn." in n for n in names["attn"])
    assert names["ffn"] and all(".mlp." in n for n in names["ffn"])
    assert set(names["attn"]) | set(names["ffn"]) < set(names["all"])


@pytest.mark.parametrize("bad, message", [
    ({"attack_method": "cw"}, "attack_method"),
    ({"attack_init": "zeros"}, "attack_init"),
    ({"component": "embeddings"}, "component"),
    ({"prefix_tokens": 0}, "prefix_tokens"),
    ({"retain_weight": -1.0}, "retain_weight"),
    ({"attack_lr": 0.0}, "attack_lr"),
])
def test_advunlearn_rejects_bad_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_params("advunlearn", bad)


def test_advunlearn_needs_a_generation_per_prompt(ldm):
    with pytest.raises(ValueError, match="samples"):
        advunlearn_erase(ldm, [PROMPT, "a red triangle", "a blue triangle"], AdvUnlearnParams(**TRAIN), progress=False)
