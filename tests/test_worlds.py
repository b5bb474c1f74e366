"""The world contract, run on every world through ``open_world``: what any chapter may rely on.

Worlds: the shipped ``tiny`` profile (random-weight shapes world), a tiny Stable-Diffusion-layout
world built in a temporary folder, and the shipped ``mini`` profile when its trained world is in
the cache (training it takes many minutes, so the tests never do it).
"""

from __future__ import annotations

import pytest
import torch
import yaml

from memories_lib.core.concepts import ConceptPrompts
from memories_lib.core.images import ImageSet
from memories_lib.core.judging import concept_head
from memories_lib.core.profile import PROFILES_DIR, ProfileError, parse_profile
from memories_lib.worlds import WORLDS, Detector, SimilarityModel, World, WorldError, open_world

from conftest import USER_CACHE
from memories_lib.core.paths import cache_dir
from memories_lib.worlds.shapes.training import STAGES, stage_path
from sd_world import build_tiny_sd_world  # tests/sd_world.py

N = 3


@pytest.fixture(scope="module", params=["tiny", "tiny-sd", "mini"])
def world(request, tmp_path_factory) -> World:
    if request.param == "tiny-sd":
        return open_world(build_tiny_sd_world(tmp_path_factory.mktemp("sd-world")))
    opened = open_world(request.param)
    if request.param == "mini":
        _borrow_trained_world(opened)
        if not opened.is_prepared():
            pytest.skip(f"the mini world is not trained in {USER_CACHE} (its training takes many minutes)")
    opened.prepare(progress=False)  # seconds for the tiny worlds
    return opened


def _borrow_trained_world(world: World) -> None:
    """Link each stage of the user's trained shapes world into the tests' cache, if all are there (only read)."""
    config = world.training_config
    folders = [stage_path(config, s) for s in STAGES]
    trained = [USER_CACHE / folder.relative_to(cache_dir()) for folder in folders]
    if all(t.is_dir() for t in trained):
        for folder, t in zip(folders, trained):
            if not folder.exists():
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.symlink_to(t, target_is_directory=True)


@pytest.fixture(scope="module")
def filtered(world: World) -> bool:
    """Whether the erased set keeps only images the detector agrees on (off for untrained detectors)."""
    return bool(world.profile.parameters.get("filter_erased_set", True))


def test_every_world_kind_is_tested():
    assert set(WORLDS) == {"shapes", "stable-diffusion"}, "add a world of the new kind to the fixture above"


def test_world_describes_itself(world: World):
    assert isinstance(world.interpret, bool) and world.name == world.profile.name
    assert world.concepts and set(world.concepts) <= set(world.known_concepts())
    described = world.describe()
    assert set(described) == {"erased_set", "reference_set", "control_set"} and all(t.strip() for t in described.values())


def test_concepts_have_a_kind_rivals_and_prompts(world: World):
    for concept in world.known_concepts():
        kind = world.concept_kind(concept)
        assert kind and concept not in world.rivals(concept)
        assert all(world.concept_kind(r) == kind for r in world.rivals(concept))
        prompts = world.concept_prompts(concept)
        assert isinstance(prompts, ConceptPrompts) and prompts.concept == concept
        assert len(prompts.prompts) == len(prompts.guides) >= 1 and prompts.prompt == prompts.prompts[0]
        naming = world.naming_prompts(concept, 5)
        assert len(naming) == 5 and all(isinstance(p, str) and p for p in naming)
        assert world.naming_prompts(concept, 5) == naming
        sample = world.caption_sample(concept, 4, seed=1)
        assert len(sample) == 4 and world.caption_sample(concept, 4, seed=1) == sample


def test_unknown_concepts_are_refused_naming_the_known_ones(world: World):
    with pytest.raises(WorldError, match="no-such-concept.*knows"):
        world.check_concepts(["no-such-concept"])
    for call in (lambda: world.concept_prompts("no-such-concept"),
                 lambda: world.erased_set("no-such-concept", N, seed=0),
                 lambda: world.reference_set(N, seed=0, exclude=["no-such-concept"])):
        with pytest.raises(WorldError, match="no-such-concept"):
            call()


def _check_set(images: ImageSet, n: int, size: int) -> None:
    assert 2 <= len(images) <= n and len(images.prompts) == len(images)
    assert images.images.shape[1:] == (3, size, size) and images.images.dtype == torch.float32
    assert 0 <= images.images.min() and images.images.max() <= 1
    assert all(isinstance(p, str) and p.strip() for p in images.prompts)


def test_erased_set_is_seeded_and_deterministic(world: World, filtered: bool):
    concept = world.concepts[0]
    size = world.base_model().image_size
    first = world.erased_set(concept, N, seed=0, filtered=filtered, progress=False)
    _check_set(first, N, size)
    again = world.erased_set(concept, N, seed=0, filtered=filtered, progress=False)
    assert torch.equal(first.images, again.images) and first.prompts == again.prompts
    other = world.erased_set(concept, N, seed=1, filtered=filtered, progress=False)
    assert not torch.equal(first.images, other.images) or first.prompts != other.prompts
    assert 0 < first.info.get("acceptance", 1.0) <= 1


def test_reference_set_is_seeded_and_deterministic(world: World):
    size = world.base_model().image_size
    first = world.reference_set(N, seed=0, exclude=world.concepts)
    _check_set(first, N, size)
    assert len(first) == N
    again = world.reference_set(N, seed=0, exclude=world.concepts)
    assert torch.equal(first.images, again.images) and first.prompts == again.prompts
    other = world.reference_set(N, seed=1, exclude=world.concepts)
    assert not torch.equal(first.images, other.images)


def test_control_set_is_the_base_models_generations_without_the_concepts(world: World, filtered: bool):
    filtered = bool(world.profile.parameters.get("filter_control_set", filtered))
    size = world.base_model().image_size
    first = world.control_set(N, seed=0, exclude=world.concepts, filtered=filtered, progress=False)
    _check_set(first, N, size)
    assert first.name == "R_control" and 0 < first.info["acceptance"] <= 1
    assert first.info["excluded"] == list(world.concepts) and first.info["filtered"] == filtered
    again = world.control_set(N, seed=0, exclude=world.concepts, filtered=filtered, progress=False)
    assert torch.equal(first.images, again.images) and first.prompts == again.prompts
    other = world.control_set(N, seed=1, exclude=world.concepts, filtered=filtered, progress=False)
    assert not torch.equal(first.images, other.images)
    captions = world.control_captions(20, seed=0, exclude=world.concepts)
    assert len(captions) == 20 and captions == world.control_captions(20, seed=0, exclude=world.concepts)
    for concept in world.concepts:
        text = world.concept_text(concept).lower()
        assert not any(text in c.lower() for c in captions), (concept, captions)
    with pytest.raises(WorldError, match="no-such-concept"):
        world.control_set(N, seed=0, exclude=["no-such-concept"])


def test_detector_judges_every_concept(world: World):
    detector = world.detector()
    assert isinstance(detector, Detector) and detector.identity() == world.detector().identity()
    for concept in world.known_concepts():
        assert concept_head(detector, concept) == world.concept_kind(concept)
    images = world.reference_set(N, seed=0).images
    proba = detector.predict_proba(images)
    assert set(proba) == set(detector.label_names)
    for head, p in proba.items():
        assert p.shape == (N, len(detector.label_names[head]))
        torch.testing.assert_close(p.sum(-1), torch.ones(N), atol=1e-4, rtol=0)


def test_similarity_scores_images_against_texts(world: World):
    model = world.similarity()
    assert isinstance(model, SimilarityModel) and model.identity() == world.similarity().identity()
    reference = world.reference_set(N, seed=0)
    texts = [world.naming_prompts(c, 1)[0] for c in world.concepts]
    scores = model.similarity(reference.images, texts)
    assert scores.shape == (N, len(texts)) and torch.isfinite(scores).all()
    assert scores.abs().max() <= 1 + 1e-5
    names = [world.concept_text(c) for c in world.known_concepts()]  # every concept's name, not only the profile's
    assert model.similarity(reference.images, names).shape == (N, len(names))


def test_base_model_is_loaded_once_and_sized(world: World):
    base = world.base_model()
    assert world.base_model() is base
    assert base.image_size == world.reference_set(N, seed=0).images.shape[-1]


def test_unknown_world_kind_and_keys_are_refused():
    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    with pytest.raises(ProfileError, match="unknown world kind 'dreams'.*shapes"):
        open_world(parse_profile({**raw, "world": {"kind": "dreams"}}))
    with pytest.raises(ProfileError, match="world: unknown key.*colour_depth"):
        open_world(parse_profile({**raw, "world": {"kind": "shapes", "colour_depth": 8}}))
    with pytest.raises(WorldError, match="concepts \\['church'\\] are not concepts of this shapes world"):
        open_world(parse_profile({**raw, "world": {"kind": "shapes"}, "concepts": ["church"]}))


@pytest.mark.slow
def test_chapter_4_runs_end_to_end_in_the_tiny_stable_diffusion_world(tmp_path):
    """The concept-memory chapter on a Stable-Diffusion-layout world: prompt CSVs, an image folder,
    COCO, a classifier, CLIP, a computed (UCE) and a published (checkpoint) erased model."""
    import json

    from memories_lib.book import execute_chapter, resolve_chapter
    from conftest import REPO

    profile = build_tiny_sd_world(tmp_path / "world")
    out = execute_chapter(resolve_chapter(REPO, "04_concept_memory"), str(profile),
                          {"inversion": "ddim", "n_boot": 50, "official_draws": 50},
                          output=tmp_path / "04.ipynb", progress=False)
    cells = json.loads(out.read_text())["cells"]
    text = json.dumps([c.get("outputs", []) for c in cells])
    assert "Traceback" not in text and "Error" not in text
    for row in ("vanilla", "uce", "esd-pub"):
        assert row in text, f"the chapter's table has no row for {row}"
    assert "church" in text and "van_gogh" in text
    for column in ("d(E,R_ctrl) EMD", "W2, 50 N", "diverged", "regen. detected"):
        assert column in text, f"the chapter's tables have no column {column!r}"



@pytest.mark.slow
@pytest.mark.parametrize("name, parameters, expected", [
    ("05_many_memories", {"n_boot": 50, "official_draws": 50},
     ("decoder only", "single seed (ch. 4)", "d(M, C) W2, 50 N", "cosine between memories")),
    ("06_geometry", {"num_samples": 200}, ("CV / N(0, I) CV", "distance to own seed", "seed shift by re-encoding")),
])
def test_sib_chapters_run_end_to_end_in_the_tiny_stable_diffusion_world(tmp_path, name, parameters, expected):
    """The chapters of the Sequential Inversion Block on a Stable-Diffusion-layout world: queries from the prompt
    CSVs and the style folder, supports from COCO (6 images without the concepts: 2 queries x 3 supports), a
    computed (UCE) and a published (checkpoint) erased model, the official ReNoise run with its re-encoding."""
    import json

    from memories_lib.book import execute_chapter, resolve_chapter
    from conftest import REPO

    profile = build_tiny_sd_world(tmp_path / "world")
    small = {"num_queries": 2, "num_supports": 3, "decoder_steps": 3, "num_steps": 2, "filter_erased_set": False}
    out = execute_chapter(resolve_chapter(REPO, name), str(profile), {**small, **parameters},
                          output=tmp_path / f"{name}.ipynb", progress=False)
    cells = json.loads(out.read_text())["cells"]
    text = json.dumps([c.get("outputs", []) for c in cells])
    assert "Traceback" not in text and "Error" not in text
    for row in ("vanilla", "uce", "esd-pub", "church", "van_gogh"):
        assert row in text, f"the chapter's tables have no row for {row}"
    for column in expected:
        assert column in text, f"the chapter's tables have no column {column!r}"

@pytest.mark.slow
@pytest.mark.parametrize("name, parameters, expected", [
    ("01_background", {"num_reference": 200, "compare_images": 2, "roundtrip_images": 2, "divergence_images": 2,
                       "step_counts": [2, 5]}, ("nti-memories", "the profile's Stable Diffusion model")),
    ("07_limitations", {"num_steps": 2, "filter_erased_set": False, "num_scrambled": 2},
     ("uce", "esd-pub", "the profile's detector of the concept")),
    ("09_three_views", {"num_steps": 2, "filter_erased_set": False, "num_images": 4, "attack_pairs": 2,
                        "attack_stages": 2, "attack_iterations": 2, "num_reference": 1000, "official_draws": 50,
                        "n_boot": 50, "images_per_concept": 2},
     ("esd-pub", "church", "published checkpoints where the profile names them")),
])
def test_the_other_chapters_of_every_world_run_in_the_tiny_stable_diffusion_world(tmp_path, name, parameters,
                                                                                   expected):
    """Chapters 1, 7 and 9 (every world's) on a Stable-Diffusion-layout world, whose paper tables then give the
    reasons of that world, not the shapes world's."""
    import json

    from memories_lib.book import execute_chapter, resolve_chapter
    from conftest import REPO

    profile = build_tiny_sd_world(tmp_path / "world")
    out = execute_chapter(resolve_chapter(REPO, name), str(profile), parameters, output=tmp_path / f"{name}.ipynb",
                          progress=False)
    text = json.dumps([c.get("outputs", []) for c in json.loads(out.read_text())["cells"]])
    assert "Traceback" not in text and "Error" not in text
    for word in expected:
        assert word in text, f"{name} in the Stable Diffusion world does not show {word!r}"
    assert "no Stable Diffusion weights can be downloaded" not in text and "no COCO here" not in text


def test_shapes_guides_replace_the_concept_by_its_kinds_anchor():
    import dataclasses

    from memories_lib.core.profile import WorldSection, thaw

    tiny = open_world("tiny")
    cp = tiny.concept_prompts("triangle")
    assert dict(zip(cp.prompts, cp.guides))["a red triangle on a striped background"] == \
        "a red circle on a striped background"
    assert dict(zip(*(lambda c: (c.prompts, c.guides))(tiny.concept_prompts("circle"))))["a circle"] == "a square"
    stripes = tiny.concept_prompts("stripes")
    assert dict(zip(stripes.prompts, stripes.guides))["a star on a striped background"] == "a star on a plain background"
    assert all("triangle" not in g for g in cp.guides) and len(cp.guides) == len(cp.prompts)

    def with_guides(rule):
        options = {**thaw(tiny.profile.world.options), "guides": rule}
        return open_world(dataclasses.replace(tiny.profile, world=WorldSection("shapes", options)))

    left_out = with_guides("left-out").concept_prompts("triangle")
    assert dict(zip(left_out.prompts, left_out.guides))["a red triangle"] == "a red shape"
    with pytest.raises(ValueError, match="guides must be one of"):
        with_guides("nearest")
