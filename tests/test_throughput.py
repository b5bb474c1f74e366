"""How the UNet is fed: the batch and thread rule, and batched work equal to one-at-a-time work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memories_lib.core import throughput
from memories_lib.core.images import ImageSet
from memories_lib.core.judging import judged_generations, judged_generations_many
from memories_lib.core.sampling import regenerate, sample_seeds
from memories_lib.core.store import Store
from memories_lib.experiments.concept_memory import invert_set, invert_sets
from memories_lib.inversion.renoise import _auto_corr

from benchmarks.bench_throughput import auto_corr_per_image  # the per-image loop ReNoise ran before


# --------------------------------------------------------------------------- the rule


def test_batches_are_equal_and_at_most_the_target():
    assert throughput.split_evenly(300, 256) == 150  # two batches of 150, not 256 and 44
    assert throughput.split_evenly(256, 256) == 256
    assert throughput.split_evenly(257, 256) == 129
    assert throughput.split_evenly(5, 256) == 5
    assert throughput.batch_size(150) == 150
    assert throughput.batch_size(1000, rows_per_item=2) == 125  # 8 batches of 125 images, 250 rows each
    assert throughput.batch_size(0) == 1
    with pytest.raises(ValueError):
        throughput.batch_size(10, rows_per_item=0)


def test_the_memory_budget_limits_the_batch():
    assert throughput.batch_size(100, bytes_per_row=1000, budget=10_000) == 10
    assert throughput.batch_size(100, 2, bytes_per_row=1000, budget=10_000) == 5
    assert throughput.batch_size(100, bytes_per_row=1000, budget=10) == 1  # never below one item


def test_threads_follow_the_batch_and_the_cap(monkeypatch):
    monkeypatch.setenv("MEMORIES_THREADS", "4")
    assert throughput.threads_for(throughput.MULTI_THREAD_ROWS - 1) == 1
    assert throughput.threads_for(throughput.MULTI_THREAD_ROWS) == 4
    monkeypatch.setenv("MEMORIES_THREADS", "1")
    assert throughput.threads_for(1024) == 1
    monkeypatch.setenv("MEMORIES_THREADS", "two")
    with pytest.raises(ValueError, match="MEMORIES_THREADS"):
        throughput.threads_for(1024)
    monkeypatch.setenv("MEMORIES_THREADS", "1")
    before = torch.get_num_threads()
    with throughput.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_memory_budget_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MEMORIES_MEMORY_BUDGET", "2G")
    assert throughput.memory_budget() == 2 * 2**30
    monkeypatch.setenv("MEMORIES_MEMORY_BUDGET", "512M")
    assert throughput.memory_budget() == 512 * 2**20
    monkeypatch.setenv("MEMORIES_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="MEMORIES_MEMORY_BUDGET"):
        throughput.memory_budget()
    monkeypatch.delenv("MEMORIES_MEMORY_BUDGET")
    assert 0 < throughput.memory_budget() <= throughput.available_memory()


def test_calibration_picks_a_valid_batch_under_a_small_budget(ldm):
    per_row = throughput.row_bytes(
        ldm.unet, tuple(ldm.latent_shape), (ldm.tokenizer.model_max_length, ldm.unet.config.cross_attention_dim))
    assert per_row > 0
    # A budget of three rows: three images a batch (one row each), one with guidance (two rows each).
    assert throughput.unet_batch_size(ldm, 50, budget=3 * per_row) == 3
    assert throughput.unet_batch_size(ldm, 50, 2, budget=3 * per_row) == 1
    assert throughput.unet_batch_size(ldm, 50) == 50  # a tiny model: everything in one batch
    # A batch the rule picks runs: the generation of 7 images within a 3-row budget.
    seeds = sample_seeds(ldm, 7, torch.Generator().manual_seed(0))
    together = regenerate(ldm, seeds, ["a red circle"] * 7, 2, guidance_scale=1.0, progress=False)
    small = regenerate(ldm, seeds, ["a red circle"] * 7, 2, guidance_scale=1.0, progress=False,
                       batch_size=throughput.unet_batch_size(ldm, 7, budget=3 * per_row))
    torch.testing.assert_close(small, together, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- batched = one at a time


def test_generation_batched_equals_one_at_a_time(ldm):
    prompts = ["a red circle", "a blue star", "a green square", "a cross"]
    seeds = sample_seeds(ldm, 4, torch.Generator().manual_seed(1))
    together = regenerate(ldm, seeds, prompts, 3, guidance_scale=3.0, progress=False)
    apart = torch.cat([regenerate(ldm, seeds[i:i + 1], prompts[i:i + 1], 3, guidance_scale=3.0, progress=False)
                       for i in range(4)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


def test_many_generation_requests_equal_each_alone(ldm, tmp_path):
    from memories_lib.worlds.shapes.classifier import ShapesClassifier

    torch.manual_seed(0)
    judge = ShapesClassifier(channels=(4, 4)).eval()
    requests = [(["a red triangle", "a blue star"], 3), (["a circle"] * 3, 4), (["a green square"], 3)]
    kwargs = dict(num_steps=2, guidance_scale=2.0, progress=False)
    together = judged_generations_many(ldm, judge, requests, store=Store(tmp_path / "a"), **kwargs)
    alone_store = Store(tmp_path / "b")
    alone = [judged_generations(ldm, judge, prompts, seed=seed, store=alone_store, **kwargs)
             for prompts, seed in requests]
    for t, a in zip(together, alone):
        assert t.prompts == a.prompts
        # Stored as uint8: a batch's float noise may move a value across a rounding edge, by 1/255.
        assert (t.images - a.images).abs().max() <= 1 / 255 + 1e-6
    # Each request has its own entry, the same key as alone: the second store serves the first's.
    assert sorted(p.name for p in (tmp_path / "a").rglob("*.json")) == \
        sorted(p.name for p in (tmp_path / "b").rglob("*.json"))


def test_inverting_sets_together_equals_each_set_alone(ldm, tmp_path):
    g = torch.Generator().manual_seed(0)
    sets = {"E": ImageSet("E", torch.rand(3, 3, 32, 32, generator=g), ["a red star"] * 3),
            "R": ImageSet("R", torch.rand(2, 3, 32, 32, generator=g), ["a blue circle"] * 2)}
    together = invert_sets(ldm, sets, Store(tmp_path / "a"), method="ddim", num_steps=3)
    for name, images in sets.items():
        alone = invert_set(ldm, images, Store(tmp_path / name), method="ddim", num_steps=3, batch_size=1)
        assert len(together[name]) == len(images)
        torch.testing.assert_close(together[name].seeds, alone.seeds, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(together[name].nll, alone.nll, rtol=1e-4)
        np.testing.assert_allclose(together[name].psnr, alone.psnr, rtol=1e-4)


@pytest.mark.parametrize("side", [8, 16, 64])
def test_batched_auto_correlation_equals_the_per_image_loop(side):
    x = torch.randn(5, 4, side, side, generator=torch.Generator().manual_seed(side))

    def generators():
        return [torch.Generator().manual_seed(42 + i) for i in range(5)]

    a = x.clone().requires_grad_(True)
    (grad_loop,) = torch.autograd.grad(auto_corr_per_image(a, generators()), a)
    b = x.clone().requires_grad_(True)
    loss = _auto_corr(b, generators())
    (grad_batched,) = torch.autograd.grad(loss, b)
    # The gradient (all that the regulariser uses) is the same to the last bit here; the summed loss
    # differs by float rounding only.
    torch.testing.assert_close(grad_batched, grad_loop, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss.detach(), auto_corr_per_image(x, generators()), rtol=1e-5, atol=0)


def test_every_concept_draws_its_erased_set_from_its_own_seeds():
    from memories_lib.worlds.shapes.world import CONCEPT_IDS, erased_set_seed

    seeds = [erased_set_seed(c, 0, attempt) for c in CONCEPT_IDS for attempt in range(4)]
    control = [0 + 7919 + attempt for attempt in range(4)]  # the control set's (worlds.base)
    assert len(set(seeds)) == len(seeds) and not set(seeds) & set(control)


def test_erased_models_computed_in_parallel_processes_equal_those_computed_here(tmp_path, monkeypatch):
    from memories_lib.core.models import hash_modules
    from memories_lib.experiments.models import erased_model, missing_erased_models, prepare_erased_models
    from memories_lib.worlds import open_world

    monkeypatch.setenv("MEMORIES_THREADS", "2")  # two workers of one thread each
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "parallel"))
    world = open_world("tiny")
    pairs = [("esd-x", "triangle"), ("esd-u", "triangle")]
    assert missing_erased_models(world, ["esd-x", "esd-u"], ["triangle"]) == pairs
    assert prepare_erased_models(world, ["esd-x", "esd-u"], ["triangle"], progress=False) == 2
    assert missing_erased_models(world, ["esd-x", "esd-u"], ["triangle"]) == []
    there = {pair: hash_modules(erased_model(world, *pair).load(world.load_model).unet) for pair in pairs}

    monkeypatch.setenv("MEMORIES_THREADS", "1")
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "here"))
    world = open_world("tiny")
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        here = {pair: hash_modules(erased_model(world, *pair).load(world.load_model).unet) for pair in pairs}
    assert here == there


def test_memories_threads_caps_torch_on_import():
    import os
    import subprocess
    import sys

    code = "import torch, memories_lib.core.sampling; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's default: every core
    env["MEMORIES_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
