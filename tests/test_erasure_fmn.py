"""Forget-Me-Not on a tiny random SD-layout model: the attention it removes, the tokens it targets, its recorder."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.models import encode_prompts, hash_modules
from memories_lib.erasure import (
    FMNParams,
    attention_on_tokens,
    concept_token_mask,
    fmn_erase,
    fmn_parameter_names,
    recording_cross_attention,
    resolve_params,
)
from memories_lib.erasure.training import add_noise

PROMPTS, GUIDES = ["a triangle", "a red triangle"], ["a shape", "a red shape"]
CHEAP = dict(guides=GUIDES, num_images=2, sample_steps=2)


def _tokens(ldm, prompt: str, mask_row: torch.Tensor) -> list[str]:
    ids = ldm.tokenizer(prompt, padding="max_length", max_length=ldm.tokenizer.model_max_length).input_ids
    return ldm.tokenizer.convert_ids_to_tokens([i for i, m in zip(ids, mask_row) if m])


def _concept_attention(unet, ldm, prompt: str, mask_row: torch.Tensor) -> float:
    """Mean attention probability on the concept's tokens, on fresh noisy latents (seed 123) with ``prompt``."""
    generator = torch.Generator().manual_seed(123)
    z0 = torch.randn(8, *ldm.latent_shape, generator=generator)
    z_t, t, _ = add_noise(ldm, z0, generator)
    with torch.no_grad(), recording_cross_attention(unet) as recorder:
        unet(z_t, t, encoder_hidden_states=encode_prompts(ldm, [prompt] * 8))
        return float(attention_on_tokens(recorder.probs, mask_row.expand(8, -1)).mean())


def test_fmn_lowers_the_attention_on_the_concepts_tokens(ldm, one_thread):
    before = hash_modules(ldm.unet)
    result = fmn_erase(ldm, PROMPTS, FMNParams(iterations=20, lr=1e-3, **CHEAP), progress=False)
    assert hash_modules(ldm.unet) == before, "FMN modified the base UNet"
    mask = concept_token_mask(ldm.tokenizer, PROMPTS, GUIDES)
    base = _concept_attention(ldm.unet, ldm, PROMPTS[0], mask[0])
    erased = _concept_attention(result.unet, ldm, PROMPTS[0], mask[0])
    assert erased < 0.9 * base, f"attention on the concept's tokens {base:.4f} -> {erased:.4f}"
    assert result.losses[-1] < result.losses[0]
    assert result.tokens == {"a triangle": ["triangle", "<eos>"], "a red triangle": ["triangle", "<eos>"]}
    assert len(result.trained) == len(list(ldm.unet.parameters()))  # official: the whole UNet


def test_recorder_computes_attention_as_diffusers_does_and_restores_the_processors(ldm, one_thread):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, *ldm.latent_shape, generator=generator)
    t = torch.tensor([10, 900])
    cond = encode_prompts(ldm, PROMPTS)
    layers = [m for n, m in ldm.unet.named_modules() if n.endswith("attn2")]
    processors = [type(m.processor) for m in layers]
    with torch.no_grad():
        plain = ldm.unet(z, t, encoder_hidden_states=cond).sample
        with recording_cross_attention(ldm.unet) as recorder:
            recorded = ldm.unet(z, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-4)
    assert len(recorder.probs) == len(layers) == 4
    for probs in recorder.probs:  # (batch * heads, queries, tokens), each row a distribution over the tokens
        assert probs.shape[-1] == ldm.tokenizer.model_max_length
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert [type(m.processor) for m in layers] == processors


def test_attention_on_tokens_picks_the_marked_columns_of_each_prompt():
    probs = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2 * 3, 4, 5)  # batch 2, heads 3
    mask = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    picked = attention_on_tokens([probs, probs], mask)
    by_prompt = probs.reshape(2, 3, 4, 5)
    expected = torch.cat([by_prompt[0][..., [1, 4]].flatten(), by_prompt[1][..., [2]].flatten()])
    assert picked.shape == (2 * (3 * 4 * 3),)
    assert sorted(picked.tolist()) == sorted(torch.cat([expected, expected]).tolist())
    with pytest.raises(ValueError, match="do not fit"):
        attention_on_tokens([probs], mask[:, :4])


def test_concept_tokens_from_guides_or_words(ldm):
    by_guide = concept_token_mask(ldm.tokenizer, PROMPTS, GUIDES)
    assert [_tokens(ldm, p, m) for p, m in zip(PROMPTS, by_guide)] == [["triangle", "<eos>"], ["triangle", "<eos>"]]
    by_words = concept_token_mask(ldm.tokenizer, ["a red triangle on a red square"], words="red triangle", end_token=False)
    assert _tokens(ldm, "a red triangle on a red square", by_words[0]) == ["red", "triangle"]
    one_guide = concept_token_mask(ldm.tokenizer, ["a red star"], ["a star"], end_token=False)
    assert _tokens(ldm, "a red star", one_guide[0]) == ["red"]
    with pytest.raises(ValueError, match="no concept token.*'a shape'"):
        concept_token_mask(ldm.tokenizer, ["a shape"], ["a shape"])
    with pytest.raises(ValueError, match="no concept token"):
        concept_token_mask(ldm.tokenizer, PROMPTS, words="star")
    with pytest.raises(ValueError, match="3 guides for 2 prompts"):
        concept_token_mask(ldm.tokenizer, PROMPTS, GUIDES + ["a star"])


def test_fmn_refuses_bad_settings():
    with pytest.raises(ValueError, match="parameters must be one of"):
        resolve_params("fmn", {"parameters": "everything"})
    with pytest.raises(ValueError, match="learning rate"):
        resolve_params("fmn", {"lr": 0})
    with pytest.raises(ValueError, match="num_images >= 1"):
        resolve_params("fmn", {"num_images": 0})
    with pytest.raises(ValueError, match="words"):
        resolve_params("fmn", {"words": " "})


def test_fmn_is_seeded_and_cross_attention_mode_trains_attn2_only(ldm, one_thread):
    settings = dict(iterations=2, lr=1e-3, parameters="cross-attention", **CHEAP)
    runs = [fmn_erase(ldm, PROMPTS, FMNParams(seed=seed, **settings), progress=False) for seed in (0, 0, 1)]
    assert hash_modules(runs[0].unet) == hash_modules(runs[1].unet)
    assert hash_modules(runs[0].unet) != hash_modules(runs[2].unet)
    assert runs[0].trained == fmn_parameter_names(ldm.unet, "cross-attention")
    base = dict(ldm.unet.named_parameters())
    changed = {n for n, p in runs[0].unet.named_parameters() if not torch.equal(p, base[n])}
    assert changed and all(".attn2." in n for n in changed)
