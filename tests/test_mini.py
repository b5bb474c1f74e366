"""The shapes world: data determinism, captions, training configs, the training cache and its stages."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from memories_lib.worlds.shapes import data
from memories_lib.worlds.shapes.classifier import HEADS, ShapesClassifier, attribute_of
from memories_lib.worlds.shapes import training
from memories_lib.worlds.shapes.config import ConfigError, PRESETS, latent_shape, resolve_config
from memories_lib.worlds.shapes.data import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    ShapeSpec,
    caption,
    labels,
    make_dataset,
    prompt,
    render,
    sample_specs,
    vocabulary,
)
from memories_lib.core.models import hash_modules, load_ldm
from memories_lib.core.profile import load_profile, thaw
from memories_lib.core.store import content_key
from memories_lib.worlds.shapes.training import cache, cli
from memories_lib.worlds.shapes.training.loop import train_loop, warmup_cosine
from memories_lib.worlds.shapes.world import ShapesWorld

# --------------------------------------------------------------------------- data


def test_same_seed_gives_the_same_bytes_and_another_seed_differs():
    a, specs_a = make_dataset(12, 32, seed=3)
    b, specs_b = make_dataset(12, 32, seed=3)
    c, _ = make_dataset(12, 32, seed=4)
    assert a.dtype == torch.float32 and a.shape == (12, 3, 32, 32)
    assert a.numpy().tobytes() == b.numpy().tobytes() and specs_a == specs_b
    assert not torch.equal(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_a_numpy_generator_is_advanced_in_place():
    rng = np.random.default_rng(0)
    first, second = sample_specs(5, rng), sample_specs(5, rng)
    assert first != second
    assert sample_specs(5, np.random.default_rng(0)) == first
    with pytest.raises(ValueError, match="int seed or a numpy Generator"):
        sample_specs(3, "seed")


def test_captions_name_shape_colour_and_background():
    assert caption(ShapeSpec("triangle", "red", "stripes")) == "a red triangle on a striped background"
    assert caption(ShapeSpec("star", "orange", "dots")) == "an orange star on a dotted background"
    assert ShapeSpec("circle", "blue", "plain").caption == "a blue circle on a plain background"
    assert prompt("star") == "a star"
    assert prompt(colour="red") == "a red shape"
    assert prompt(background="dots") == "a shape on a dotted background"
    assert prompt("cross", background="plain") == "a cross on a plain background"
    with pytest.raises(ValueError, match="unknown shape"):
        prompt("hexagon")
    with pytest.raises(ValueError, match="unknown colour"):
        ShapeSpec("star", "pink", "plain")


def test_the_vocabulary_covers_every_caption_and_prompt():
    words = set(vocabulary())
    assert list(vocabulary()) == sorted(words)
    texts = [caption(s) for s in sample_specs(200, 1)]
    texts += [prompt(s, c, b) for s in (None, *SHAPES) for c in (None, *COLOURS) for b in (None, *BACKGROUNDS)]
    assert set(" ".join(texts).split()) <= words


def test_subsets_and_labels():
    specs = sample_specs(40, 2, shapes=["star", "cross"], colours=["green"], backgrounds=["dots"])
    assert {s.shape for s in specs} == {"star", "cross"} and {s.colour for s in specs} == {"green"}
    assert {s.background for s in specs} == {"dots"}
    lab = labels(specs)
    assert [SHAPES[i] for i in lab["shape"]] == [s.shape for s in specs]
    assert set(lab["colour"].tolist()) == {COLOURS.index("green")}
    with pytest.raises(ValueError, match="non-empty subset"):
        sample_specs(3, 0, shapes=["hexagon"])


def test_render_draws_the_shape_in_its_colour_on_its_background():
    spec = ShapeSpec("circle", "blue", "plain", cx=0.5, cy=0.5, radius=0.3, bg_level=0.1)
    img = render(spec, 32)
    assert img.shape == (3, 32, 32)
    centre = img[:, 16, 16] * 255
    assert torch.allclose(centre, torch.tensor(data.COLOUR_RGB["blue"], dtype=torch.float32), atol=1.5)
    assert torch.allclose(img[:, 0, 0], torch.full((3,), 0.1), atol=1 / 255)
    striped = render(ShapeSpec("circle", "blue", "stripes", bg_level=0.1, pattern_contrast=0.2), 32)
    corner_rows = striped[0, :4, :].flatten()
    assert float(corner_rows.max() - corner_rows.min()) > 0.15  # two grey levels
    square = render(ShapeSpec("square", "blue", "plain"), 32)
    circle = render(ShapeSpec("circle", "blue", "plain"), 32)
    assert not torch.equal(square, circle)
    assert render(spec, 48).shape == (3, 48, 48)


def test_concepts_map_to_classifier_heads():
    assert attribute_of("triangle") == "shape" and attribute_of("stripes") == "background"
    assert attribute_of("red") == "colour"
    with pytest.raises(ValueError, match="unknown concept"):
        attribute_of("church")


# --------------------------------------------------------------------------- configs


def test_configs_resolve_from_presets_and_overrides():
    assert resolve_config(None) == PRESETS["full"] == resolve_config({"preset": "full"})
    assert resolve_config("tiny") == resolve_config({"preset": "tiny"})
    changed = resolve_config({"preset": "tiny", "unet": {"steps": 5}})
    assert changed["unet"]["steps"] == 5 and changed["unet"]["lr"] == PRESETS["tiny"]["unet"]["lr"]
    assert changed != resolve_config("tiny")
    assert latent_shape("full") == (4, 8, 8)
    with pytest.raises(ConfigError, match="unknown training config key .unet.stepz."):
        resolve_config({"unet": {"stepz": 3}})
    with pytest.raises(ConfigError, match="unknown training preset"):
        resolve_config("huge")
    with pytest.raises(ConfigError, match="divisible"):
        resolve_config({"preset": "tiny", "image_size": 30})


def test_each_stage_is_keyed_by_the_content_key_of_its_config_sections_and_version(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path))
    cfg = resolve_config("tiny")
    for stage, name in (("vae", "vae"), ("unet", "ldm"), ("classifier", "classifier"), ("contrastive", "contrastive")):
        parts = {"stage": stage, "config": {k: cfg[k] for k in cache.STAGE_DEPENDS[stage]},
                 "version": cache.TRAINING_VERSION}
        assert cache.stage_parts("tiny", stage) == parts
        key = content_key(**parts)
        assert training.stage_path("tiny", stage) == tmp_path / "worlds" / f"shapes-{name}-{key[:16]}"
    folders = {s: training.stage_path("tiny", s) for s in training.STAGES}
    assert len(set(folders.values())) == len(training.STAGES)
    # Two spellings of one config share their folders; a changed value gives another.
    for stage, folder in folders.items():
        assert training.stage_path({"preset": "tiny"}, stage) == training.stage_path(cfg, stage) == folder
        assert training.stage_path({"preset": "tiny", "unet": {"steps": PRESETS["tiny"]["unet"]["steps"]}},
                                   stage) == folder
    with pytest.raises(ValueError, match="unknown training stage"):
        training.stage_path("tiny", "gan")
    # The training code's version is part of every key.
    monkeypatch.setattr(cache, "TRAINING_VERSION", cache.TRAINING_VERSION + 1)
    assert all(training.stage_path("tiny", s) != folders[s] for s in training.STAGES)


ALL_STAGES = {"vae", "unet", "classifier", "contrastive"}


@pytest.mark.parametrize(
    "override, changed",
    [
        ({"classifier": {"steps": 5}}, {"classifier"}),
        ({"classifier": {"noise": 0.1}}, {"classifier"}),
        ({"contrastive": {"embed_dim": 16}}, {"contrastive"}),
        ({"unet": {"steps": 5}}, {"unet"}),
        ({"text_encoder": {"hidden_size": 32}}, {"unet"}),
        ({"captions": {"uncond_prob": 0.2}}, {"unet"}),
        ({"vae": {"steps": 5}}, {"vae", "unet"}),
        ({"vae": {"kl_weight": 1e-5}}, {"vae", "unet"}),
        ({"seed": 1}, ALL_STAGES),
        ({"image_size": 16}, ALL_STAGES),
        ({"dataset_size": 64}, ALL_STAGES),
        ({"eval_size": 8}, ALL_STAGES),
    ],
)
def test_a_changed_setting_moves_only_the_stages_that_depend_on_it(override, changed):
    assert set(training.STAGES) == ALL_STAGES
    moved = {s for s in training.STAGES
             if training.stage_path({"preset": "tiny", **override}, s) != training.stage_path("tiny", s)}
    assert moved == changed


def test_every_config_section_is_a_dependency_of_some_stage():
    depends = cache.STAGE_DEPENDS
    assert set(depends) == set(training.STAGES) and set(cache.STAGE_DIRS) == set(training.STAGES)
    assert set().union(*depends.values()) == set(resolve_config("full"))
    assert all(set(cache.DATA_KEYS) <= set(keys) for keys in depends.values())
    assert set(depends["vae"]) <= set(depends["unet"])  # the UNet trains on the VAE's latents


def test_the_learning_rate_warms_up_then_decays_to_its_floor():
    factor = warmup_cosine(4, 20, floor=0.1)
    assert [factor(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    decay = [factor(i) for i in range(4, 21)]
    assert decay[0] == pytest.approx(1.0) and decay[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert factor(12) == pytest.approx(0.55)  # halfway: floor + (1 - floor) / 2
    assert factor(100) == pytest.approx(0.1)  # and it stays at the floor


def test_the_training_loop_steps_on_the_schedule_and_records_each_step():
    # A constant gradient makes every AdamW step move the parameter by the step's learning rate.
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    after: list[float] = []
    recorded = train_loop([w], lambda i: (w * 1.0, torch.tensor(float(i))), steps=10, lr=0.1, warmup=2, floor=0.2,
                          after_step=lambda i: after.append(w.item()), desc="test", progress=False)
    assert recorded == [float(i) for i in range(10)]
    factor = warmup_cosine(2, 10, floor=0.2)
    assert -np.diff([0.0, *after]) == pytest.approx([0.1 * factor(i) for i in range(10)], rel=1e-6)
    # A step that returns only its loss records the loss.
    start, factor = w.item(), warmup_cosine(1, 3)
    expected = [2 * start, 2 * (start - 0.1 * factor(0)), 2 * (start - 0.1 * factor(0) - 0.1 * factor(1))]
    assert train_loop([w], lambda i: w * 2.0, steps=3, lr=0.1, warmup=1, desc="test",
                      progress=False) == pytest.approx(expected, rel=1e-6)


def test_the_mini_profile_names_the_full_config_and_its_latent_dimension():
    profile = load_profile("mini")
    assert profile.world.kind == ShapesWorld.kind
    config = thaw(ShapesWorld.parse_spec(profile).training)
    assert resolve_config(config) == resolve_config("full")
    c, h, w = latent_shape(config)
    assert profile.parameters["latent_dim"] == c * h * w == 256
    assert ShapesWorld(profile).image_size == resolve_config("full")["image_size"]
    for concept in profile.concepts:
        attribute_of(concept)


# --------------------------------------------------------------------------- training and its cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny config trained once into a private cache root."""
    root = tmp_path_factory.mktemp("mini_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMORIES_CACHE", str(root))
        path = training.ensure_trained("tiny", threads=1, progress=False)
        yield root, path


@pytest.fixture
def mini_cache(trained, monkeypatch):
    monkeypatch.setenv("MEMORIES_CACHE", str(trained[0]))
    return trained


#: Every trainer, by the module of the training package that holds it.
TRAINERS = {"train_vae": training.vae, "train_text_unet": training.text_unet,
            "train_classifier": training.classifier, "train_contrastive": training.contrastive}


def test_training_writes_a_loadable_diffusers_folder(mini_cache):
    root, path = mini_cache
    assert path == training.stage_path("tiny", "unet") and path.parent == root / "worlds"
    assert path.name.startswith("shapes-ldm-") and (path / "model_index.json").is_file()
    for stage in training.STAGES:  # each stage's folder records what its key is made of
        recorded = json.loads((training.stage_path("tiny", stage) / cache.KEY_FILE).read_text())
        assert recorded == json.loads(json.dumps(cache.stage_parts("tiny", stage)))
    ldm = load_ldm(path)
    assert ldm.latent_shape == latent_shape("tiny")
    assert type(ldm.unet).__name__ == "UNet2DConditionModel" and ldm.unet.config.cross_attention_dim == 16
    assert ldm.scheduler.config.beta_schedule == "scaled_linear"
    assert ldm.scheduler.config.beta_start == 0.00085 and ldm.scheduler.config.beta_end == 0.012
    report = training.training_report("tiny")
    assert set(report) == set(training.STAGES)
    wall = training.training_wall_seconds(report)  # every stage records when it ran
    assert 0 < wall <= sum(r["wall_seconds"] for r in report.values()) + 1e-6
    assert ldm.vae.config.scaling_factor == pytest.approx(1 / report["vae"]["latent_std"])
    ids = ldm.tokenizer(prompt("star", "red", "dots")).input_ids
    assert ldm.tokenizer.unk_token_id not in ids


def test_classifier_and_contrastive_model_load_from_the_cache(mini_cache):
    images, _ = make_dataset(5, 32, seed=9)
    classifier = training.load_classifier("tiny")
    predicted = classifier.predict(images)
    assert set(predicted) == set(HEADS)
    for head, names in predicted.items():
        assert names.shape == (5,) and set(names) <= set(HEADS[head])
    proba = classifier.predict_proba(images)
    assert torch.allclose(proba["colour"].sum(-1), torch.ones(5), atol=1e-5)
    clip = training.load_contrastive("tiny")
    sim = clip.similarity(images, ["a star", "a red shape on a dotted background"])
    assert sim.shape == (5, 2) and float(sim.abs().max()) <= 1.0 + 1e-5
    with pytest.raises(ValueError, match="vocabulary"):
        clip.similarity(images, ["a church"])


def test_a_second_call_reuses_the_cache(mini_cache, monkeypatch):
    root, path = mini_cache
    folders = [training.stage_path("tiny", s) for s in training.STAGES]
    mtimes = {p: p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise AssertionError("retrained a cached stage")

    for name, module in TRAINERS.items():
        monkeypatch.setattr(module, name, boom)
    assert training.ensure_trained({"preset": "tiny"}, threads=1, progress=False) == path
    training.load_classifier("tiny")
    assert {p: p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*") if p.is_file()} == mtimes


def test_a_missing_stage_is_trained_alone(mini_cache, monkeypatch):
    import shutil

    root, path = mini_cache
    classifier_dir = training.stage_path("tiny", "classifier")
    before = hash_modules(ShapesClassifier.load(classifier_dir))
    ldm_mtime = (path / "model_index.json").stat().st_mtime_ns
    others = {s: training.stage_path("tiny", s) for s in training.STAGES if s != "classifier"}
    other_mtimes = {s: (f / cache.METRICS_FILE).stat().st_mtime_ns for s, f in others.items()}
    shutil.rmtree(classifier_dir)
    assert training.missing_stages("tiny") == ["classifier"]
    calls = []
    real = training.classifier.train_classifier

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    for name, module in TRAINERS.items():
        if name != "train_classifier":
            monkeypatch.setattr(module, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    monkeypatch.setattr(training.classifier, "train_classifier", counting)
    training.ensure_trained("tiny", threads=1, progress=False)
    assert calls == [1] and training.missing_stages("tiny") == []
    assert (path / "model_index.json").stat().st_mtime_ns == ldm_mtime
    assert {s: (f / cache.METRICS_FILE).stat().st_mtime_ns for s, f in others.items()} == other_mtimes
    # Deterministic given the config's seed: the retrained classifier has the same weights.
    assert hash_modules(ShapesClassifier.load(classifier_dir)) == before
    assert not [p for p in classifier_dir.parent.iterdir() if p.name.startswith(f".{classifier_dir.name}-")]


def test_missing_stages_share_one_draw_of_the_training_data(mini_cache, monkeypatch):
    import shutil

    from memories_lib.worlds.shapes.training import dataset

    before = hash_modules(ShapesClassifier.load(training.stage_path("tiny", "classifier")))
    for stage in ("classifier", "contrastive"):
        shutil.rmtree(training.stage_path("tiny", stage))
    assert training.missing_stages("tiny") == ["classifier", "contrastive"]
    drawn = []
    real = dataset.make_dataset

    def counting(n, *args, **kwargs):
        drawn.append(n)
        return real(n, *args, **kwargs)

    monkeypatch.setattr(dataset, "make_dataset", counting)
    training.ensure_trained("tiny", threads=1, progress=False)
    cfg = resolve_config("tiny")
    assert sorted(drawn) == sorted([cfg["dataset_size"], cfg["eval_size"]])  # training and held-out images, once
    assert training.missing_stages("tiny") == []
    assert hash_modules(ShapesClassifier.load(training.stage_path("tiny", "classifier"))) == before


@pytest.mark.parametrize("stage", ["vae", "unet", "classifier", "contrastive"])
def test_each_trainer_reads_only_the_config_sections_its_key_is_made_of(mini_cache, stage):
    # Trained from a config holding only its dependencies (a read of any other section raises
    # KeyError), a stage computes what it computed from the whole config.
    from diffusers import AutoencoderKL

    from memories_lib.worlds.shapes.training.dataset import TrainingData

    cfg = resolve_config("tiny")
    only = {k: cfg[k] for k in cache.STAGE_DEPENDS[stage]}
    data = TrainingData(only, progress=False)
    with training._torch_threads(1):
        if stage == "vae":
            _, metrics = training.vae.train_vae(only, data, progress=False)
        elif stage == "unet":
            autoencoder = AutoencoderKL.from_pretrained(training.stage_path("tiny", "vae")).eval()
            *_, metrics = training.text_unet.train_text_unet(only, autoencoder.requires_grad_(False), data,
                                                              progress=False)
        elif stage == "classifier":
            _, metrics = training.classifier.train_classifier(only, data, progress=False)
        else:
            _, metrics = training.contrastive.train_contrastive(only, data, progress=False)
    recorded = training.training_report("tiny")[stage]
    assert {k: v for k, v in metrics.items() if k != "seconds"} == {k: recorded[k] for k in metrics if k != "seconds"}


def test_training_is_deterministic_given_the_seed(mini_cache, tmp_path, monkeypatch):
    _, path = mini_cache
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path / "other"))
    again = training.ensure_trained("tiny", stages=("unet",), threads=1, progress=False)
    assert again != path and training.missing_stages("tiny") == ["classifier", "contrastive"]
    first, second = load_ldm(path), load_ldm(again)
    assert first.weights_hash() == second.weights_hash()


def test_unknown_stages_are_refused():
    with pytest.raises(ValueError, match="unknown training stage"):
        training.ensure_trained("tiny", stages=("vae", "gan"))


def test_train_mini_takes_the_training_config_of_the_profile(tmp_path):
    import yaml

    assert resolve_config(thaw(cli.profile_training_config("tiny"))) == resolve_config("tiny")
    base = {"name": "x", "description": "", "model": {"num_inference_steps": 2}}
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump({**base, "world": {"kind": "shapes", "training": {"preset": "tiny",
                                                                                        "unet": {"steps": 4}}}}))
    assert resolve_config(thaw(cli.profile_training_config(str(custom))))["unet"]["steps"] == 4
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**base, "world": {"kind": "stable-diffusion"}}))
    with pytest.raises(SystemExit, match="not the shapes world"):
        cli.profile_training_config(str(other))


def test_generations_are_judged_per_attribute(mini_cache, monkeypatch):
    from memories_lib.core import judging
    from memories_lib.worlds.shapes.evaluate import judge_generations, prompt_grid, vae_reconstruct

    _, path = mini_cache
    ldm = load_ldm(path)
    grid = prompt_grid(shapes=["star", "cross"], colours=["red"], backgrounds=[None])
    assert [p for p, _ in grid] == ["a red star", "a red cross"]
    judged = judge_generations(ldm, training.load_classifier("tiny"), grid, 2, seed=0, num_steps=2,
                               guidance_scale=3.0, progress=False)
    assert judged.images.shape == (4, 3, 32, 32) and len(judged.table) == 4
    acc = judged.accuracy()
    expected = float((judged.table["pred_shape"] == judged.table["shape"]).mean())
    assert acc["shape"] == pytest.approx(expected)
    assert np.isnan(acc["background"])  # no prompt named a background
    assert list(judged.accuracy_by("shape").index) == ["cross", "star"]

    def boom(*args, **kwargs):
        raise AssertionError("generated again although the results store holds them")

    monkeypatch.setattr(judging, "regenerate", boom)
    again = judge_generations(ldm, training.load_classifier("tiny"), grid, 2, seed=0, num_steps=2,
                              guidance_scale=3.0, progress=False)
    assert torch.equal(again.images, judged.images) and again.table.equals(judged.table)
    with pytest.raises(AssertionError, match="generated again"):
        judge_generations(ldm, training.load_classifier("tiny"), grid, 2, seed=1, num_steps=2, progress=False)
    rec = vae_reconstruct(ldm, make_dataset(3, 32, seed=0)[0])
    assert rec.shape == (3, 3, 32, 32)


def test_the_cli_trains_and_reports(mini_cache, capsys):
    assert cli.main(["--config", "tiny", "--quiet", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert all(str(training.stage_path("tiny", s)) in out for s in training.STAGES) and "eval_psnr_mean" in out
    assert cli.main(["--profile", "tiny", "--quiet", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert all(str(training.stage_path("tiny", s)) in out for s in training.STAGES)


def test_training_threads_are_fixed_not_read_from_the_load(monkeypatch):
    monkeypatch.delenv("MEMORIES_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))  # a busy machine changes nothing
    assert training.default_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("MEMORIES_THREADS", "1")
    assert training.default_threads() == 1
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv("MEMORIES_THREADS", bad)
        with pytest.raises(ValueError, match="MEMORIES_THREADS"):
            training.default_threads()


def test_judges_trained_in_a_second_process_equal_those_trained_here(trained, tmp_path, monkeypatch):
    # The fixture trained every stage in this process with one thread; with two allowed threads the
    # judges train in a spawned process (one thread) beside the VAE and LDM (one thread): the same weights.
    monkeypatch.setenv("MEMORIES_CACHE", str(tmp_path))
    monkeypatch.setenv("MEMORIES_THREADS", "2")
    training.ensure_trained("tiny", progress=False)
    for stage in training.STAGES:
        here = training.stage_path("tiny", stage)
        there = trained[0] / "worlds" / here.name
        assert here.is_dir() and there.is_dir(), stage
        for weights in sorted(there.rglob("*.safetensors")):
            assert (here / weights.relative_to(there)).read_bytes() == weights.read_bytes(), weights


def test_training_wall_clock_counts_stages_side_by_side_once():
    """The wall clock of a training is the union of its stages' spans, not their sum; unknown without the spans."""
    report = {"vae": {"started_at": 0.0, "finished_at": 300.0}, "unet": {"started_at": 300.0, "finished_at": 1000.0},
              "classifier": {"started_at": 1.0, "finished_at": 125.0},
              "contrastive": {"started_at": 125.0, "finished_at": 200.0}}
    assert training.training_wall_seconds(report) == 1000.0
    resumed = {**report, "unet": {"started_at": 5000.0, "finished_at": 5700.0}}  # a pause between two runs
    assert training.training_wall_seconds(resumed) == 300.0 + 700.0
    assert training.training_wall_seconds({**report, "unet": {"seconds": 700.0}}) is None
    assert training.training_wall_seconds({}) is None
