"""UnlearnDiffAtk (``memories_lib.attacks``): a planted case where the answer is known, and the pieces.

The planted model: the tiny model's text encoder and VAE with a stand-in UNet that is the perfect
denoiser towards the latent its text "describes", x0(c) = P mean_l(c_l) (P a fixed random map), so
eps(z_t, c, t) = (z_t - sqrt(a_t) x0(c)) / sqrt(1 - a_t). The target is x0 of "star dotted a red
circle"; attacked with the plain prompt "a red circle" and two prefix tokens, the prefix "star dotted"
makes the objective zero, and the model's generation from a prompt is (almost exactly) x0 of that
prompt, so a detector that scores closeness to the target image can judge the attack.
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTokenizer

from memories_lib.attacks import (
    PromptAttackConfig,
    attack_images,
    attack_objective,
    attack_timesteps,
    candidate_tokens,
    official_prefix_tokens,
    project_to_simplex,
    prompt_attack,
)
from memories_lib.attacks.prompt import _prefix_embeddings
from memories_lib.core.models import LDM, decode_latents, encode_prompts, hash_modules
from memories_lib.core.sampling import sample_seeds
from memories_lib.core.tokenizer import tokenize

PLAIN, PLANTED = "a red circle", "star dotted a red circle"
FAST = PromptAttackConfig(prefix_tokens=2, iterations=10, timesteps=5)
FOUR = PromptAttackConfig(prefix_tokens=2, iterations=10, timesteps=5, batch_size=4)


class PlantedUNet(torch.nn.Module):
    """The perfect denoiser towards x0(c) = P mean_l(c_l): what the model "generates" from a text."""

    def __init__(self, alphas: torch.Tensor, dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.register_buffer("alphas", alphas.float().clone())
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(dim, shape[0] * shape[1] * shape[2], generator=g) / dim**0.5,
                                       requires_grad=False)
        self.config = SimpleNamespace(in_channels=shape[0], sample_size=shape[1], cross_attention_dim=dim)

    def x0(self, cond: torch.Tensor) -> torch.Tensor:
        return (cond.mean(1) @ self.proj).view(-1, *self.shape)

    def forward(self, sample, timestep, encoder_hidden_states):
        a = self.alphas[torch.as_tensor(timestep).long()].view(-1, 1, 1, 1).to(sample.dtype)
        return SimpleNamespace(sample=(sample - a.sqrt() * self.x0(encoder_hidden_states)) / (1 - a).sqrt())


@pytest.fixture(scope="module")
def planted(ldm, one_thread):
    unet = PlantedUNet(ldm.scheduler.alphas_cumprod, ldm.text_encoder.config.hidden_size, ldm.latent_shape)
    model = LDM(vae=ldm.vae, unet=unet, text_encoder=ldm.text_encoder, tokenizer=ldm.tokenizer, scheduler=ldm.scheduler)
    target = unet.x0(encode_prompts(model, [PLANTED]))
    return SimpleNamespace(ldm=model, target=target)


def _objective(ldm, prompts, target):
    targets = target.expand(len(prompts), -1, -1, -1)
    grid = attack_timesteps(ldm, 50)
    return attack_objective(ldm, prompts, targets, grid, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- the planted case


@pytest.fixture(scope="module")
def attacks(planted):
    """Four attacks on the planted pair, from four generators seeded from one (one batch)."""
    return prompt_attack(planted.ldm, [PLAIN] * 4, planted.target.expand(4, -1, -1, -1), FOUR,
                         generator=torch.Generator().manual_seed(0), progress=False)


def test_official_prefix_length_is_five_words_for_unsafe_concepts_and_three_otherwise():
    unsafe = ("nudity", "violence", "illegal_activity", "Illegal activity")
    assert [official_prefix_tokens(c) for c in unsafe] == [5] * 4
    assert [official_prefix_tokens(c) for c in ("church", "van_gogh", "parachute", "triangle")] == [3] * 4


def test_the_attack_lowers_its_objective_below_the_plain_prompt(planted, attacks):
    words = candidate_tokens(planted.ldm.tokenizer)[1]
    prefixed = [f"{a} {b} {PLAIN}" for a, b in itertools.product(words, repeat=2)]
    values = _objective(planted.ldm, [PLAIN, PLANTED, *prefixed], planted.target)
    plain, planted_value, every = values[0], values[1], values[2:]
    assert planted_value < 1e-6 * plain  # the planted prefix is a perfect answer
    assert (every > 0.5 * plain).float().mean() > 0.75  # and most two-word prefixes are no answer at all
    found = torch.stack([every[prefixed.index(a.prompt)] for a in attacks])
    assert found.median() < 0.8 * plain, (plain, found)
    assert found.min() < 0.5 * plain, (plain, found)
    assert (every < found.min()).float().mean() < 0.05  # the best attack beats 95% of all prefixes
    for a in attacks:
        assert len(a.losses) == FOUR.iterations * FOUR.timesteps
        assert a.timesteps == attack_timesteps(planted.ldm, FOUR.timesteps) == [100, 300, 500, 700, 900]
        assert a.success is None and a.stage_prompts[-1] == a.prompt


def _closeness(images: torch.Tensor, target_image: torch.Tensor) -> torch.Tensor:
    """A stand-in detector: how close each image is to the image of the concept (higher: closer)."""
    return -(images - target_image).pow(2).flatten(1).mean(1)


def test_the_attack_raises_the_detector_score(planted, attacks):
    ldm = planted.ldm
    target_image = decode_latents(ldm, planted.target)
    best = min(attacks, key=lambda a: float(_objective(ldm, [a.prompt], planted.target)))
    seeds = sample_seeds(ldm, 3, torch.Generator().manual_seed(5)).repeat(2, 1, 1, 1)
    images = attack_images(ldm, [PLAIN] * 3 + [best] * 3, seeds, num_steps=10, guidance_scale=1.0, batch_size=6,
                           progress=False)
    plain, attacked = _closeness(images, target_image).view(2, 3)
    assert (attacked > plain).all(), (plain, attacked)

    # The same detector as the attack's judge (at the first seed): the plain prompts are asked first and
    # fail; an attack stops at the first stage whose prompt passes, the others run every stage.
    threshold = float(plain[0] + attacked[0]) / 2
    calls = []

    def judge(indices, prompts):
        calls.append(list(prompts))
        shown = attack_images(ldm, prompts, seeds[:1].expand(len(prompts), -1, -1, -1), num_steps=10,
                              guidance_scale=1.0, batch_size=len(prompts), progress=False)
        return (_closeness(shown, target_image) > threshold).tolist()

    config = PromptAttackConfig(prefix_tokens=2, iterations=10, timesteps=50, batch_size=4)
    results = prompt_attack(ldm, [PLAIN] * 4, planted.target.expand(4, -1, -1, -1), config,
                            generator=torch.Generator().manual_seed(0), judge=judge, progress=False)
    assert calls[0] == [PLAIN] * 4
    assert any(r.success for r in results), [r.prompt for r in results]
    for r in results:
        assert r.stage_prompts[-1] == r.prompt and len(r.losses) == 10 * len(r.stage_prompts)
        assert len(r.stage_prompts) < 50 if r.success else len(r.stage_prompts) == 50
    assert len(calls) - 1 == max(len(r.stage_prompts) for r in results)


def test_a_plain_prompt_that_already_succeeds_is_not_attacked(planted):
    (result,) = prompt_attack(planted.ldm, [PLAIN], planted.target, FAST, generator=torch.Generator().manual_seed(0),
                              judge=lambda indices, prompts: [True] * len(prompts), progress=False)
    assert result.success is True and result.prompt == PLAIN
    assert result.prefix == () and result.losses == [] and result.stage_prompts == []


def test_same_generator_same_attack(planted):
    def run(seed):
        return prompt_attack(planted.ldm, [PLAIN, "a blue square"], planted.target.expand(2, -1, -1, -1), FAST,
                             generator=torch.Generator().manual_seed(seed), progress=False)

    first, again, other = run(3), run(3), run(4)
    assert [(a.prompt, a.losses) for a in first] == [(a.prompt, a.losses) for a in again]
    assert [a.losses for a in first] != [a.losses for a in other]


# --------------------------------------------------------------------------- on the tiny model itself


def test_on_the_tiny_model_the_prefix_is_real_words_that_tokenise_back(ldm, one_thread):
    before = hash_modules(ldm.unet, ldm.text_encoder)
    config = PromptAttackConfig(prefix_tokens=3, iterations=4, timesteps=2, vocabulary=("star", "Striped", "blue"))
    target = sample_seeds(ldm, 1, torch.Generator().manual_seed(0))
    (result,) = prompt_attack(ldm, ["a purple circle"], target, config, generator=torch.Generator().manual_seed(0),
                              progress=False)
    assert hash_modules(ldm.unet, ldm.text_encoder) == before  # the model is not modified
    assert not ldm.text_encoder.get_input_embeddings()._forward_hooks  # and no hook is left behind
    assert len(result.prefix) == 3 and set(result.prefix) <= {"star", "striped", "blue"}
    assert result.prompt == " ".join(result.prefix) + " a purple circle"
    tok = ldm.tokenizer
    expected = [tok.bos_token_id, *result.prefix_ids, *tok("a purple circle", add_special_tokens=False).input_ids,
                tok.eos_token_id]
    assert tok.convert_ids_to_tokens(list(result.prefix_ids)) == list(result.prefix)
    assert tokenize(tok, [result.prompt])[0, :len(expected)].tolist() == expected
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_a_sampled_prefix_is_encoded_as_its_text(ldm):
    """The relaxed prefix, at a one-hot point, gives the text encoder exactly what the prompt's text gives."""
    ids, words = candidate_tokens(ldm.tokenizer)
    table = ldm.text_encoder.get_input_embeddings().weight[ids]
    one_hot = torch.nn.functional.one_hot(torch.tensor([[words.index("star"), words.index("dotted")]]), len(ids))
    placeholder = tokenize(ldm.tokenizer, ["cross cross a red circle"])
    with torch.no_grad(), _prefix_embeddings(ldm.text_encoder, one_hot.float() @ table):
        relaxed = ldm.text_encoder(placeholder)[0]
    assert torch.allclose(relaxed, encode_prompts(ldm, [PLANTED]), atol=1e-6)


def _tiny_clip_tokenizer(folder) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over a few letters, where "church" and "dog" are words and "chur" a sub-word piece."""
    letters = list("achurdog")
    merged = ["ch", "chu", "chur", "church</w>", "ch</w>", "do", "dog</w>"]
    vocab = letters + [c + "</w>" for c in letters] + merged + ["<|startoftext|>", "<|endoftext|>"]
    merges = ["c h", "ch u", "chu r", "chur ch</w>", "c h</w>", "d o", "do g</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12)


def test_with_a_bpe_tokenizer_only_whole_words_are_candidates_and_the_prompt_tokenises_back(ldm, tmp_path, one_thread):
    tok = _tiny_clip_tokenizer(tmp_path)
    ids, words = candidate_tokens(tok)
    pieces = tok.convert_ids_to_tokens(ids)
    assert "church" in words and "dog" in words
    assert all(p.endswith("</w>") for p in pieces)  # no sub-word piece ("chur"), no start or end token
    with pytest.raises(ValueError, match="unknown vocabulary"):
        candidate_tokens(tok, ["chu"])  # two tokens in BPE
    clip_ldm = LDM(vae=ldm.vae, unet=ldm.unet, text_encoder=ldm.text_encoder, tokenizer=tok, scheduler=ldm.scheduler)
    config = PromptAttackConfig(prefix_tokens=3, iterations=3, timesteps=2)
    (result,) = prompt_attack(clip_ldm, ["a dog"], sample_seeds(ldm, 1, torch.Generator().manual_seed(0)), config,
                              generator=torch.Generator().manual_seed(0), progress=False)
    assert set(tok.convert_ids_to_tokens(list(result.prefix_ids))) <= set(pieces)
    words = tok("a dog", add_special_tokens=False).input_ids
    assert tok(result.prompt).input_ids == [tok.bos_token_id, *result.prefix_ids, *words, tok.eos_token_id]


# --------------------------------------------------------------------------- pieces and settings


def test_simplex_projection():
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    p = project_to_simplex(x)
    assert torch.allclose(p.sum(-1), torch.ones(6, dtype=torch.float64)) and (p >= 0).all()
    # The optimality conditions: x - p is one constant theta on the support and <= theta off it.
    theta = (x - p)[p > 0].view(-1)
    for row in range(6):
        on = p[row] > 0
        shift = (x[row] - p[row])[on]
        assert torch.allclose(shift, shift[0].expand_as(shift))
        assert (x[row][~on] <= shift[0] + 1e-12).all()
    assert theta.numel() > 0
    assert torch.allclose(project_to_simplex(p), p)  # points of the simplex stay where they are
    assert torch.equal(project_to_simplex(torch.tensor([[5.0, 0.0, -1.0]])), torch.tensor([[1.0, 0.0, 0.0]]))


def test_official_timestep_grid(ldm):
    assert attack_timesteps(ldm, 50) == list(range(10, 1000, 20))
    assert attack_timesteps(ldm, 1) == [500]
    with pytest.raises(ValueError, match="timesteps"):
        attack_timesteps(ldm, 1001)


def test_defaults_are_the_official_ones():
    c = PromptAttackConfig()
    assert (c.prefix_tokens, c.iterations, c.timesteps, c.lr, c.weight_decay) == (5, 40, 50, 1e-2, 0.1)


@pytest.mark.parametrize("settings, message", [
    (dict(prefix_tokens=0), "prefix_tokens"),
    (dict(iterations=0), "iterations"),
    (dict(lr=0.0), "lr"),
    (dict(vocabulary="star"), "vocabulary"),
    (dict(vocabulary=()), "vocabulary"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PromptAttackConfig(**settings)


@pytest.mark.parametrize("prompts, targets, config, message", [
    ([""], 1, FAST, "non-empty prompt"),
    (["   "], 1, FAST, "non-empty prompt"),
    (["a zebra"], 1, FAST, "does not know"),
    (["a red circle"], 1, PromptAttackConfig(vocabulary=("star", "zebra")), r"unknown vocabulary: \['zebra'\]"),
    (["a red circle on a blue striped background of the shape"], 1, PromptAttackConfig(prefix_tokens=5), "no room"),
    (["a red circle", "a star"], 1, FAST, "targets"),
    ([], 0, FAST, "no prompts"),
])
def test_bad_inputs_are_refused(planted, prompts, targets, config, message):
    z = planted.target.expand(targets, -1, -1, -1)
    with pytest.raises(ValueError, match=message):
        prompt_attack(planted.ldm, prompts, z, config, generator=torch.Generator(), progress=False)


def test_a_judge_must_answer_for_every_prompt(planted):
    with pytest.raises(ValueError, match="verdicts"):
        prompt_attack(planted.ldm, [PLAIN], planted.target, FAST, generator=torch.Generator(),
                      judge=lambda indices, prompts: [], progress=False)
