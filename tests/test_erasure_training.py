"""The training pieces the fine-tuning erasure methods share (tiny random model)."""

from __future__ import annotations

import pytest
import torch

from memories_lib.erasure.training import add_noise, noise_loss, sample_latents, trainable_copy


def test_sample_latents_are_the_models_generations_prompts_in_turn_and_deterministic(ldm):
    make = lambda: sample_latents(ldm, ["a triangle", "a star"], 5, generator=torch.Generator().manual_seed(3),
                                  num_steps=2, batch_size=2)
    data = make()
    assert data.latents.shape == (5, *ldm.latent_shape) and data.index.tolist() == [0, 1, 0, 1, 0]
    assert data.embeds.shape[0] == 2 and torch.equal(data.latents, make().latents)
    other = sample_latents(ldm, ["a triangle", "a star"], 5, generator=torch.Generator().manual_seed(4), num_steps=2)
    assert not torch.equal(data.latents, other.latents)
    z0, cond = data.batch(3, torch.Generator().manual_seed(0))
    assert z0.shape == (3, *ldm.latent_shape) and cond.shape == (3, *data.embeds.shape[1:])
    with pytest.raises(ValueError, match="at least one prompt"):
        sample_latents(ldm, [], 2, generator=torch.Generator())


def test_add_noise_follows_the_forward_process(ldm):
    z0 = torch.randn(2, *ldm.latent_shape, generator=torch.Generator().manual_seed(0))
    z_t, t, eps = add_noise(ldm, z0, torch.Generator().manual_seed(1), timesteps=torch.tensor([0, 999]))
    a = ldm.scheduler.alphas_cumprod[[0, 999]].view(-1, 1, 1, 1)
    assert torch.allclose(z_t, a.sqrt() * z0 + (1 - a).sqrt() * eps, atol=1e-6)
    drawn = add_noise(ldm, z0, torch.Generator().manual_seed(1))[1]
    assert drawn.shape == (2,) and int(drawn.min()) >= 0 and int(drawn.max()) < 1000


def test_trainable_copy_trains_only_the_named_parameters_and_leaves_the_original(ldm):
    names = [n for n, _ in ldm.unet.named_parameters() if "attn2.to_k" in n]
    student, params = trainable_copy(ldm.unet, names)
    assert [n for n, p in student.named_parameters() if p.requires_grad] == names and len(params) == len(names)
    z0 = torch.randn(1, *ldm.latent_shape, generator=torch.Generator().manual_seed(0))
    z_t, t, eps = add_noise(ldm, z0, torch.Generator().manual_seed(1))
    cond = torch.zeros(1, 77, ldm.text_encoder.config.hidden_size)
    noise_loss(student, z_t, t, cond, eps).backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in ldm.unet.named_parameters())
    with pytest.raises(ValueError, match="no parameters"):
        trainable_copy(ldm.unet, ["no.such.weight"])
