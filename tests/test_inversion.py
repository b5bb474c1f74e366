"""Inversion methods on a tiny random LDM (latents 4x8x8): shapes, round trips, determinism, batching.

A random tiny UNet is no denoiser, so plain DDIM inversion is far from exact; the tolerances
below were measured on this model (numbers in each test) and carry a margin of 2x or more.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from memories_lib.core.sampling import ddim_sample, ddim_schedule, generate, regenerate
from memories_lib.inversion import METHODS, InversionResult, invert
from memories_lib.inversion.ddim import ddim_invert
from memories_lib.inversion.edict import edict_invert, edict_sample
from memories_lib.inversion.nti import NullTextConfig, null_text_invert, null_text_reconstruct
from memories_lib.inversion.renoise import ReNoiseConfig, _auto_corr, regularize_noise, renoise_invert
from memories_lib.core.models import encode_images, encode_prompts

PROMPTS = ["a red circle", "a blue star on a striped background", "a green square"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cond(ldm):
    return encode_prompts(ldm, PROMPTS)


@pytest.fixture(scope="module")
def z0(ldm, cond):
    """Latents that the model itself generates (a random model's VAE latents are nearly zero)."""
    g = torch.Generator().manual_seed(0)
    return ddim_sample(ldm, torch.randn(3, *ldm.latent_shape, generator=g), cond, 20, progress=False)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-sample relative L2 error of a against b."""
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


# --------------------------------------------------------------------------- DDIM


def test_schedule_follows_diffusers_and_leaves_the_model_scheduler_alone(ldm):
    schedule = ddim_schedule(ldm, 10)
    reference = DDIMScheduler.from_config(ldm.scheduler.config)
    reference.set_timesteps(10)
    assert torch.equal(schedule.timesteps, reference.timesteps)
    step = reference.config.num_train_timesteps // 10
    for t, a_prev in zip(schedule.timesteps, schedule.alphas_prev):
        prev = int(t) - step
        expected = reference.alphas_cumprod[prev] if prev >= 0 else reference.final_alpha_cumprod
        assert a_prev.item() == pytest.approx(float(expected), rel=1e-6)
    assert ldm.scheduler.num_inference_steps is None  # never set_timesteps on the model's scheduler
    with pytest.raises(ValueError, match="num_steps"):
        ddim_schedule(ldm, 0)


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_ddim_sample_equals_the_diffusers_scheduler(ldm, cond, guidance):
    z_T = torch.randn(3, *ldm.latent_shape, generator=torch.Generator().manual_seed(2))
    ours = ddim_sample(ldm, z_T, cond, 5, guidance_scale=guidance, progress=False)
    scheduler = DDIMScheduler.from_config(ldm.scheduler.config)
    scheduler.set_timesteps(5)
    uncond = encode_prompts(ldm, [""] * 3)
    x = z_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            if guidance > 1:
                e_u, e_c = ldm.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            else:
                eps = ldm.unet(x, t, encoder_hidden_states=cond).sample
            x = scheduler.step(eps, t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_ddim_round_trip_is_closer_with_many_steps(ldm, cond, z0):
    # Measured: 8 steps 0.056, 64 steps 0.012 (and 128 steps 0.0035).
    def round_trip(n: int) -> float:
        z_T, trajectory = ddim_invert(ldm, z0, cond, n, return_trajectory=True, progress=False)
        assert trajectory.shape == (n + 1, *z0.shape)
        torch.testing.assert_close(trajectory[0], z0)
        torch.testing.assert_close(trajectory[-1], z_T)
        return rel_err(ddim_sample(ldm, z_T, cond, n, progress=False), z0)

    few, many = round_trip(8), round_trip(64)
    assert many < 0.03
    assert many < 0.5 * few


def test_guidance_zero_and_one_both_mean_conditional_only(ldm, cond, z0):
    a, _ = ddim_invert(ldm, z0, cond, 4, guidance_scale=0.0, progress=False)
    b, _ = ddim_invert(ldm, z0, cond, 4, guidance_scale=1.0, progress=False)
    c, _ = ddim_invert(ldm, z0, cond, 4, guidance_scale=3.0, progress=False)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="guidance_scale"):
        ddim_invert(ldm, z0, cond, 4, guidance_scale=-1.0, progress=False)


# --------------------------------------------------------------------------- ReNoise


def test_renoise_without_renoising_is_ddim(ldm, cond, z0):
    config = ReNoiseConfig(num_renoise_steps=0).with_steps(6)
    ours, _ = renoise_invert(ldm, z0, cond, config, progress=False)
    ddim, _ = ddim_invert(ldm, z0, cond, 6, progress=False)
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)


def test_renoise_round_trip_beats_ddim(ldm, cond, z0):
    # Measured at 10 steps: ReNoise 7e-5 (official averaging), DDIM 0.055.
    config = ReNoiseConfig().with_steps(10)
    z_T, _ = renoise_invert(ldm, z0, cond, config, progress=False)
    err = rel_err(ddim_sample(ldm, z_T, cond, 10, config.reconstruction_guidance, progress=False), z0)
    ddim_T, _ = ddim_invert(ldm, z0, cond, 10, progress=False)
    ddim_err = rel_err(ddim_sample(ldm, ddim_T, cond, 10, progress=False), z0)
    assert err < 1e-3
    assert err < ddim_err / 10


def test_noise_regularisation_lowers_autocorrelation_and_is_seeded(ldm, cond, z0):
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(2, 4, 16, 16, generator=g), 3, 1, 1) * 3
    config = ReNoiseConfig.official_memories()
    before = _auto_corr(smooth, torch.Generator().manual_seed(0)).item()
    after = _auto_corr(regularize_noise(smooth, torch.randn_like(smooth), config, g),
                       torch.Generator().manual_seed(0)).item()
    assert after < 0.5 * before
    assert regularize_noise(smooth, smooth, ReNoiseConfig()) is smooth  # off by default

    reg = config.with_steps(4)
    a, _ = renoise_invert(ldm, z0, cond, reg, progress=False, generator=torch.Generator().manual_seed(3))
    b, _ = renoise_invert(ldm, z0, cond, reg, progress=False, generator=torch.Generator().manual_seed(3))
    plain, _ = renoise_invert(ldm, z0, cond, ReNoiseConfig().with_steps(4), progress=False)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all() and not torch.allclose(a, plain)


# --------------------------------------------------------------------------- null-text


def test_null_text_reconstructs_better_than_ddim_at_guidance_7_5(ldm, cond, z0):
    # Measured at 6 steps: null-text 0.11, DDIM inversion + CFG 7.5 sampling 0.20.
    n = 6
    out = null_text_invert(ldm, z0, cond, n, progress=False)
    assert out.uncond_embeds.shape == (3, n, *cond.shape[1:])
    assert out.pivots.shape == (n + 1, *z0.shape)
    assert ((out.inner_steps >= 1) & (out.inner_steps <= 10)).all()
    nti_err = rel_err(null_text_reconstruct(ldm, out.seeds, cond, out.uncond_embeds, 7.5, progress=False), z0)
    ddim_err = rel_err(ddim_sample(ldm, out.seeds, cond, n, guidance_scale=7.5, progress=False), z0)
    assert nti_err < 0.75 * ddim_err
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        NullTextConfig(guidance_scale=1.0)


def test_null_text_early_stop_is_per_image(ldm, cond, z0):
    # Losses on this model grow from ~0.03 to ~0.3 (images 0 and 2) and to ~1.6 (image 1):
    # with a threshold of 0.5 images 0 and 2 stop after one Adam step, image 1 does not.
    config = NullTextConfig(num_inner_steps=3, early_stop_epsilon=0.5, early_stop_growth=0.0)
    together = null_text_invert(ldm, z0, cond, 4, config, progress=False)
    assert (together.inner_steps[[0, 2]] == 1).all()
    assert (together.inner_steps[1, 1:] == 3).all()
    for b in range(3):
        alone = null_text_invert(ldm, z0[b:b + 1], cond[b:b + 1], 4, config, progress=False)
        assert torch.equal(alone.inner_steps[0], together.inner_steps[b])
        assert rel_err(alone.uncond_embeds[0], together.uncond_embeds[b]) < 1e-4
    untouched = null_text_invert(ldm, z0[:1], cond[:1], 2, dataclasses.replace(config, num_inner_steps=0),
                                 progress=False)
    empty = encode_prompts(ldm, [""])
    assert torch.equal(untouched.uncond_embeds[0, 1], empty[0])


# --------------------------------------------------------------------------- EDICT


def test_edict_round_trip_is_exact_in_float64(ldm, cond, z0):
    # Measured: relative error 3e-16 at 10 steps.
    hash_before = ldm.weights_hash()
    x_T, y_T, _ = edict_invert(ldm, z0.double(), cond, 10, progress=False)
    x_0, y_0 = edict_sample(ldm, x_T, y_T, cond, 10, progress=False)
    assert x_T.dtype == torch.float64
    assert rel_err(x_0, z0.double()) < 1e-10
    assert rel_err(y_0, z0.double()) < 1e-10
    assert ldm.unet.dtype == torch.float32  # cast back after the call
    ldm.invalidate_hash()
    assert ldm.weights_hash() == hash_before
    with pytest.raises(ValueError, match="mixing weight"):
        edict_invert(ldm, z0, cond, 2, mix=0.0, progress=False)


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize("method", sorted(METHODS))
def test_invert_returns_an_inversion_result(ldm, images, method):
    n = 3
    result = invert(ldm, images, PROMPTS, method=method, num_steps=n, return_trajectory=True, progress=False)
    assert isinstance(result, InversionResult) and result.method == method and len(result) == 3
    assert result.seeds.shape == result.latents.shape == (3, *ldm.latent_shape)
    assert result.seeds.dtype == torch.float32 and result.seeds.device.type == "cpu"
    assert result.reconstruction.shape == images.shape
    assert 0 <= result.reconstruction.min() and result.reconstruction.max() <= 1
    assert result.reconstruction_latents.shape == result.latents.shape
    assert result.trajectory.shape == (n + 1, 3, *ldm.latent_shape)
    assert result.info["num_steps"] == n
    torch.testing.assert_close(result.latents, encode_images(ldm, images))
    if method == "nti":
        assert result.info["uncond_embeds"].shape[:2] == (3, n)
    if method == "edict":  # the exact reconstruction holds through the API too
        assert rel_err(result.reconstruction_latents, result.latents) < 1e-5


def test_ddim_reconstruction_equals_regenerate(ldm, images):
    result = invert(ldm, images, PROMPTS, method="ddim", num_steps=4, progress=False)
    again = regenerate(ldm, result.seeds, PROMPTS, 4, guidance_scale=1.0, progress=False)
    torch.testing.assert_close(again, result.reconstruction, rtol=1e-5, atol=1e-5)
    assert invert(ldm, images, PROMPTS, method="ddim", num_steps=4, regenerate=False, progress=False).reconstruction is None


# Batched and single VAE encodings differ by ~1e-7 (float32 kernels depend on the batch);
# the inversions carry that on. Measured relative seed differences at 3 steps: DDIM, null-text
# and EDICT 4e-6, ReNoise 3.4e-4 (its fixed-point iterations amplify it at 3 coarse steps).
BATCH_TOLERANCE = {"ddim": 1e-4, "nti": 1e-4, "edict": 1e-4, "renoise": 2e-3}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batching_equals_one_at_a_time(ldm, images, method):
    together = invert(ldm, images, PROMPTS, method=method, num_steps=3, batch_size=3, progress=False)
    apart = invert(ldm, images, PROMPTS, method=method, num_steps=3, batch_size=1, progress=False)
    tolerance = BATCH_TOLERANCE[method]
    assert rel_err(together.seeds, apart.seeds) < tolerance
    assert rel_err(together.reconstruction, apart.reconstruction) < tolerance
    for key, value in together.info.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert rel_err(value, apart.info[key]) < tolerance, key


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_inputs_give_identical_seeds(ldm, images, method):
    first = invert(ldm, images[:2], PROMPTS[:2], method=method, num_steps=3, regenerate=False, progress=False)
    second = invert(ldm, images[:2], PROMPTS[:2], method=method, num_steps=3, regenerate=False, progress=False)
    assert torch.equal(first.seeds, second.seeds)


def test_method_options_reach_the_method(ldm, images):
    base = invert(ldm, images[:1], PROMPTS[:1], method="renoise", num_steps=3, regenerate=False, progress=False)
    fewer = invert(ldm, images[:1], PROMPTS[:1], method="renoise", num_steps=3, regenerate=False, progress=False,
                   num_renoise_steps=0)
    assert fewer.info["config"].num_renoise_steps == 0
    assert not torch.equal(base.seeds, fewer.seeds)
    config = dataclasses.replace(ReNoiseConfig(), num_renoise_steps=0)
    same = invert(ldm, images[:1], PROMPTS[:1], method="renoise", num_steps=3, regenerate=False, progress=False,
                  config=config)
    assert torch.equal(same.seeds, fewer.seeds)


def test_bad_arguments_raise_clear_errors(ldm, images):
    with pytest.raises(ValueError, match=r"unknown inversion method 'foo'.*'ddim'.*'edict'.*'nti'.*'renoise'"):
        invert(ldm, images, PROMPTS, method="foo")
    with pytest.raises(ValueError, match="no option"):
        invert(ldm, images, PROMPTS, method="ddim", num_steps=2, mix=0.5)
    with pytest.raises(ValueError, match="prompts"):
        invert(ldm, images, PROMPTS[:2], method="ddim", num_steps=2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        invert(ldm, images[0], PROMPTS[:1], method="ddim", num_steps=2)
    with pytest.raises(ValueError, match="num_steps"):
        invert(ldm, images, PROMPTS, method="ddim", num_steps=0)


def test_generate_is_seeded_and_regenerates(ldm):
    seeds, images01 = generate(ldm, PROMPTS, torch.Generator().manual_seed(5), num_steps=3, guidance_scale=7.5,
                               progress=False)
    again, images_again = generate(ldm, PROMPTS, torch.Generator().manual_seed(5), num_steps=3, guidance_scale=7.5,
                                   progress=False)
    assert seeds.shape == (3, *ldm.latent_shape) and images01.shape == (3, 3, 32, 32)
    assert torch.equal(seeds, again) and torch.equal(images01, images_again)
    torch.testing.assert_close(regenerate(ldm, seeds, PROMPTS, 3, 7.5, batch_size=2, progress=False), images01,
                               rtol=1e-5, atol=1e-5)
