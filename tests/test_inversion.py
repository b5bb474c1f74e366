"""Inversion methods on a tiny random LDM (latents 4x8x8): shapes, round trips, determinism, batching.

A random tiny UNet is no denoiser, so plain DDIM inversion is far from exact; the tolerances
below were measured on this model (numbers in each test) and carry a margin of 2x or more.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from memories_lib.core.sampling import ddim_sample, ddim_schedule, generate, regenerate
from memories_lib.inversion import METHODS, InversionResult, invert, resolve
from memories_lib.inversion.ddim import ddim_invert
from memories_lib.inversion.edict import edict_invert, edict_sample
from memories_lib.inversion.nti import NullTextConfig, null_text_invert, null_text_reconstruct
from memories_lib.inversion import renoise as renoise_module
from memories_lib.inversion.common import DIVERGED_MEAN_SQUARE, diverged_seeds
from memories_lib.inversion.renoise import ReNoiseConfig, _auto_corr, regularize_noise, renoise_invert
from memories_lib.core.models import encode_images, encode_prompts

PROMPTS = ["a red circle", "a blue star on a striped background", "a green square"]


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_ddim_inversion_is_its_documented_steps_written_out(ldm, cond, z0):
    """Four steps (timesteps 1, 251, 501, 751 in the order inversion visits them): each evaluates the noise at the
    current sample with the timestep of the level it moves to, and moves from the previous level (the scheduler's
    final level first) to that one. A timestep off by one step, or levels swapped, would not match."""
    scheduler = DDIMScheduler.from_config(ldm.scheduler.config)
    scheduler.set_timesteps(4)
    ts = scheduler.timesteps.tolist()[::-1]
    assert ts == [1, 251, 501, 751]
    ac = scheduler.alphas_cumprod.double()
    levels = [torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64), *(ac[t] for t in ts)]
    x = z0.clone()
    with torch.no_grad():
        for t, a_from, a_to in zip(ts, levels[:-1], levels[1:]):
            eps = ldm.unet(x, t, encoder_hidden_states=cond).sample
            a_from, a_to = a_from.float(), a_to.float()
            x = a_to.sqrt() * (x - (1 - a_from).sqrt() * eps) / a_from.sqrt() + (1 - a_to).sqrt() * eps
    ours, _ = ddim_invert(ldm, z0, cond, 4, progress=False)
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
    config = ReNoiseConfig.plain(num_renoise_steps=0).with_steps(6)
    ours, _ = renoise_invert(ldm, z0, cond, config, progress=False)
    ddim, _ = ddim_invert(ldm, z0, cond, 6, progress=False)
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)


def test_renoise_round_trip_beats_ddim(ldm, cond, z0):
    # Measured at 10 steps: ReNoise 7e-5 (official averaging), DDIM 0.055.
    config = ReNoiseConfig.plain().with_steps(10)
    z_T, _ = renoise_invert(ldm, z0, cond, config, progress=False)
    err = rel_err(ddim_sample(ldm, z_T, cond, 10, config.reconstruction_guidance, progress=False), z0)
    ddim_T, _ = ddim_invert(ldm, z0, cond, 10, progress=False)
    ddim_err = rel_err(ddim_sample(ldm, ddim_T, cond, 10, progress=False), z0)
    assert err < 1e-3
    assert err < ddim_err / 10


def test_noise_regularisation_lowers_autocorrelation_and_is_seeded(ldm, cond, z0):
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(2, 4, 16, 16, generator=g), 3, 1, 1) * 3
    config = ReNoiseConfig()
    assert config.noise_regularization_num_reg_steps == 4 and config.regularizes  # the official run's
    fresh = lambda: [torch.Generator().manual_seed(0) for _ in range(2)]  # noqa: E731
    before = _auto_corr(smooth, fresh()).item()
    after = _auto_corr(regularize_noise(smooth, torch.randn_like(smooth), config, fresh()), fresh()).item()
    assert after < 0.5 * before
    assert regularize_noise(smooth, smooth, ReNoiseConfig.plain()) is smooth  # off in the plain variant

    reg = config.with_steps(4)
    a, _ = renoise_invert(ldm, z0, cond, reg, progress=False, generators=reg.generators(3))
    b, _ = renoise_invert(ldm, z0, cond, reg, progress=False, generators=reg.generators(3))
    plain, _ = renoise_invert(ldm, z0, cond, ReNoiseConfig.plain().with_steps(4), progress=False)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all() and not torch.allclose(a, plain)
    # Each image's shifts come from its own generator: one image alone gives what it gives in the batch.
    alone, _ = renoise_invert(ldm, z0[1:2], cond[1:2], reg, progress=False, generators=reg.generators(1))
    assert rel_err(alone, a[1:2]) < 1e-4


def test_auto_correlation_shifts_follow_the_official_order():
    # Per image: for each channel, one shift in [0, side // 2) per pyramid level (16 -> 8 here).
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(5)
    shifts = [int(torch.randint(0, n, (1,), generator=g)) for n in (8, 4, 8, 4)]
    expected = 0.0
    for c, (s16, s8) in enumerate([shifts[:2], shifts[2:]]):
        level = x[:, c:c + 1]
        for s in (s16, s8):
            for dim in (2, 3):
                expected += (level * torch.roll(level, s, dims=dim)).mean() ** 2
            level = torch.nn.functional.avg_pool2d(level, 2)
    torch.testing.assert_close(_auto_corr(x, [torch.Generator().manual_seed(5)]), torch.as_tensor(expected))


@pytest.mark.parametrize("target", ["z0", "noised"])
def test_regulariser_target_is_the_noise_at_z0_itself(ldm, cond, z0, monkeypatch, target):
    # 4 steps: timesteps 751, 501, 251, 1; the official ranges regularise only below 250, i.e. at t = 1,
    # every iterate (k = 0..5, none skipped) and the averaged noise: 7 calls, all with one target.
    seen = []

    def spy(eps, eps_target, config, generators=None):
        seen.append(eps_target.clone())
        return regularize_noise(eps, eps_target, config, generators)

    monkeypatch.setattr(renoise_module, "regularize_noise", spy)
    config = ReNoiseConfig(noise_regularization_target=target).with_steps(4)
    renoise_invert(ldm, z0, cond, config, progress=False)
    assert len(seen) == 7 and all(torch.equal(t, seen[0]) for t in seen)
    t = torch.tensor(1)
    with torch.no_grad():
        if target == "z0":  # the official run: add_noise is the identity, so the target is eps(z_0, t)
            x = z0
        else:  # z_0 forward-noised to t with the second draw of each image's generator
            noise = []
            for _ in range(3):
                g = torch.Generator().manual_seed(42)
                torch.randn(1, *z0.shape[1:], generator=g)
                noise.append(torch.randn(1, *z0.shape[1:], generator=g))
            a = ldm.scheduler.alphas_cumprod[1].double()
            x = (a.sqrt() * z0.double() + (1 - a).sqrt() * torch.cat(noise).double()).float()
        hand = ldm.unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(seen[0], hand, rtol=1e-4, atol=1e-5)


def test_lambda_ac_scales_with_the_latent_only_when_asked():
    assert ReNoiseConfig().lambda_ac_for((8, 8)) == 20.0
    scaled = ReNoiseConfig(noise_regularization_scale_with_latent=True)
    assert scaled.lambda_ac_for((8, 8)) == pytest.approx(20.0 * 64 / 4096)
    assert scaled.lambda_ac_for((64, 64)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="posterior"):
        ReNoiseConfig(posterior="mode")
    with pytest.raises(ValueError, match="target"):
        ReNoiseConfig(noise_regularization_target="x")


def test_posterior_sample_is_seeded_per_image(ldm, images):
    mean = encode_images(ldm, images)
    gens = lambda n, seed=42: [torch.Generator().manual_seed(seed) for _ in range(n)]  # noqa: E731
    sample = encode_images(ldm, images, gens(3))
    assert torch.equal(sample, encode_images(ldm, images, gens(3)))
    assert not torch.allclose(sample, mean)
    assert not torch.allclose(sample, encode_images(ldm, images, gens(3, seed=7)))
    dist = ldm.vae.encode(images * 2 - 1).latent_dist
    eps = torch.cat([torch.randn(1, *mean.shape[1:], generator=g) for g in gens(3)])
    torch.testing.assert_close(sample, (dist.mean + dist.std * eps) * ldm.vae.config.scaling_factor)
    one = encode_images(ldm, images[2:3], gens(1))  # image 2 alone draws what it draws in the batch
    torch.testing.assert_close(one, sample[2:3], rtol=1e-5, atol=1e-6)
    # The API's default ReNoise starts from that sample; the plain variant from the mean.
    result = invert(ldm, images, PROMPTS, method="renoise", num_steps=2, regenerate=False, progress=False)
    assert result.config["posterior"] == "sample" and result.config["seed"] == 42
    torch.testing.assert_close(result.latents, sample, rtol=1e-5, atol=1e-6)
    plain = invert(ldm, images, PROMPTS, method="renoise-plain", num_steps=2, regenerate=False, progress=False)
    assert plain.config["seed"] is None
    torch.testing.assert_close(plain.latents, mean)


def test_divergence_is_flagged():
    seeds = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    seeds[1, 0, 0, 0] = float("nan")
    seeds[2] *= 3.0  # mean square about 9 > 4
    seeds[3, 0, 0, 0] = float("inf")
    assert diverged_seeds(seeds).tolist() == [False, True, True, True]
    assert DIVERGED_MEAN_SQUARE == 4.0
    result = InversionResult(seeds=seeds, latents=torch.zeros_like(seeds))
    assert result.diverged.tolist() == [False, True, True, True]


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


def test_nti_memories_preset_and_its_plain_ddim_seed(ldm, cond, z0, images):
    config = NullTextConfig.official_memories()
    assert (config.num_inner_steps, config.lr, config.lr_decay, config.guidance_scale) == (50, 1e-2, 0.0, 7.5)
    assert not config.early_stop and config.shared_optimizer and config.pivot == "memories"
    assert config.next_latent == "last-forward" and config.reconstruction_guidance == 1.0
    assert resolve("nti-memories")["config"] == config and resolve("nti")["config"] == NullTextConfig()

    # The seed: N - 1 = 3 DDIM steps of the 4-step schedule (751, 501, 251, 1) from z_0 taken at
    # t = 1, the noise evaluated at the level a step moves from, written with the scheduler's alphas.
    scheduler = DDIMScheduler.from_config(ldm.scheduler.config)
    scheduler.set_timesteps(4)
    ts = scheduler.timesteps.tolist()
    assert ts == [751, 501, 251, 1]
    x, ac = z0.clone(), scheduler.alphas_cumprod
    with torch.no_grad():
        for t, t_next in zip(ts[::-1][:-1], ts[::-1][1:]):
            eps = ldm.unet(x, t, encoder_hidden_states=cond).sample
            x = ac[t_next].sqrt() * (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt() + (1 - ac[t_next]).sqrt() * eps
    out = null_text_invert(ldm, z0, cond, 4, NullTextConfig.official_memories(num_inner_steps=2), progress=False)
    torch.testing.assert_close(out.seeds, x, rtol=1e-4, atol=1e-5)
    assert out.uncond_embeds.shape[1] == 3 and (out.inner_steps == 2).all()  # no early stop

    # Its reconstruction: the same 3 steps back at guidance 1 (the embeddings unused), ending at t = 1.
    with torch.no_grad():
        y = out.seeds.clone()
        for t in ts[:-1]:
            y = scheduler.step(ldm.unet(y, t, encoder_hidden_states=cond).sample, t, y).prev_sample
    ours = null_text_reconstruct(ldm, out.seeds, cond, out.uncond_embeds, 1.0, False, num_schedule_steps=4)
    torch.testing.assert_close(ours, y, rtol=1e-4, atol=1e-5)
    other = null_text_reconstruct(ldm, out.seeds, cond, torch.randn_like(out.uncond_embeds), 1.0, False,
                                  num_schedule_steps=4)
    assert torch.equal(ours, other)
    result = invert(ldm, images, PROMPTS, method="nti-memories", num_steps=4, progress=False, num_inner_steps=2)
    assert (result.info["inner_steps"] == 2).all()


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


def test_edict_sampling_is_its_documented_steps_written_out(ldm, cond, z0):
    """Two steps (timesteps 501, 1): the first updates x with the noise of y, then y with the noise of the new x; the
    second the other way round (leapfrog); each then mixes x with weight p = 0.93, then y with the new x. The
    inversion is this run backwards (the exact round trip above), so this pins both."""
    scheduler = DDIMScheduler.from_config(ldm.scheduler.config)
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [501, 1]
    ac = scheduler.alphas_cumprod.double()
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    unet, c = copy.deepcopy(ldm.unet).double(), cond.double()

    def step(sample, other, t, a_from, a_to):
        eps = unet(other, t, encoder_hidden_states=c).sample
        return a_to.sqrt() * (sample - (1 - a_from).sqrt() * eps) / a_from.sqrt() + (1 - a_to).sqrt() * eps

    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(z0.shape, generator=g, dtype=torch.float64)
    y_T = x_T + 0.1 * torch.randn(z0.shape, generator=g, dtype=torch.float64)
    x, y, p = x_T.clone(), y_T.clone(), 0.93
    with torch.no_grad():
        x = step(x, y, 501, ac[501], ac[1])
        y = step(y, x, 501, ac[501], ac[1])
        x = p * x + (1 - p) * y
        y = p * y + (1 - p) * x
        y = step(y, x, 1, ac[1], final)
        x = step(x, y, 1, ac[1], final)
        x = p * x + (1 - p) * y
        y = p * y + (1 - p) * x
    ours = edict_sample(ldm, x_T, y_T, cond, 2, progress=False)
    torch.testing.assert_close(ours[0], x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours[1], y, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(edict_sample(ldm, x_T, y_T, cond, 2, mix=0.5, progress=False)[0], ours[0])


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize("method", sorted(METHODS))
def test_invert_returns_an_inversion_result(ldm, images, method):
    n = 3
    options = {"num_inner_steps": 2} if method == "nti-memories" else {}
    result = invert(ldm, images, PROMPTS, method=method, num_steps=n, return_trajectory=True, progress=False,
                    **options)
    assert isinstance(result, InversionResult) and result.method == method and len(result) == 3
    assert result.seeds.shape == result.latents.shape == (3, *ldm.latent_shape)
    assert result.seeds.dtype == torch.float32 and result.seeds.device.type == "cpu"
    assert result.reconstruction.shape == images.shape
    assert 0 <= result.reconstruction.min() and result.reconstruction.max() <= 1
    assert result.reconstruction_latents.shape == result.latents.shape
    taken = n - 1 if method == "nti-memories" else n
    assert result.trajectory.shape == (taken + 1, 3, *ldm.latent_shape)
    assert result.info["num_steps"] == n
    assert result.diverged.tolist() == [False] * 3
    assert result.config == resolve(method, n, **options) and result.config["num_steps"] == n
    generators = None
    if result.config["posterior"] == "sample":
        generators = [torch.Generator().manual_seed(result.config["seed"]) for _ in range(3)]
    torch.testing.assert_close(result.latents, encode_images(ldm, images, generators))
    if method.startswith("nti"):
        assert result.info["uncond_embeds"].shape[:2] == (3, taken)
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
BATCH_TOLERANCE = {"ddim": 1e-4, "nti": 1e-4, "nti-memories": 1e-4, "edict": 1e-4, "renoise": 2e-3,
                   "renoise-plain": 2e-3}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batching_equals_one_at_a_time(ldm, images, method):
    options = {"num_inner_steps": 2} if method == "nti-memories" else {}
    together = invert(ldm, images, PROMPTS, method=method, num_steps=3, batch_size=3, progress=False, **options)
    apart = invert(ldm, images, PROMPTS, method=method, num_steps=3, batch_size=1, progress=False, **options)
    tolerance = BATCH_TOLERANCE[method]
    assert rel_err(together.seeds, apart.seeds) < tolerance
    assert rel_err(together.reconstruction, apart.reconstruction) < tolerance
    for key, value in together.info.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert rel_err(value, apart.info[key]) < tolerance, key


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_inputs_give_identical_seeds(ldm, images, method):
    options = {"num_inner_steps": 2} if method == "nti-memories" else {}
    first = invert(ldm, images[:2], PROMPTS[:2], method=method, num_steps=3, regenerate=False, progress=False,
                   **options)
    second = invert(ldm, images[:2], PROMPTS[:2], method=method, num_steps=3, regenerate=False, progress=False,
                    **options)
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
