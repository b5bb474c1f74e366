"""The Stable Diffusion world on a tiny random world in the real layouts (``tests/sd_world.py``)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from memories_lib.core.images import to_pil
from memories_lib.core.judging import concept_head
from memories_lib.core.profile import ProfileError
from memories_lib.core.sampling import regenerate, sample_seeds
from memories_lib.core.store import Store
from memories_lib.erasure import resolve_params
from memories_lib.worlds import Detector, SimilarityModel, WorldError, open_world
from memories_lib.worlds.stable_diffusion import StableDiffusionWorld
from memories_lib.worlds.stable_diffusion.spec import uce_preserve_scale
from sd_world import COCO_IMAGES, OBJECT_CLASSES, OBJECT_PROMPTS, STYLE_IMAGES, build_tiny_sd_world


@pytest.fixture(scope="module")
def sd_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Stable Diffusion world's profile, built once for this module."""
    return build_tiny_sd_world(tmp_path_factory.mktemp("sd_world"))


@pytest.fixture(scope="module")
def world(sd_profile: Path) -> StableDiffusionWorld:
    return open_world(sd_profile)


def variant(profile: Path, folder: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of ``profile`` in ``folder`` after ``edit(raw)`` changed its parsed YAML in place."""
    raw = yaml.safe_load(profile.read_text())
    edit(raw)
    path = folder / "variant.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def csv_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- the world and its concepts


def test_opens_with_concepts_of_both_kinds(world: StableDiffusionWorld, sd_profile: Path):
    assert isinstance(world, StableDiffusionWorld) and world.kind == "stable-diffusion"
    assert world.known_concepts() == ("church", "parachute", "van_gogh")
    assert world.concepts == ("church", "van_gogh") and not world.interpret
    assert [world.concept_kind(c) for c in world.known_concepts()] == ["object", "object", "style"]
    assert world.rivals("church") == ("parachute",) and world.rivals("van_gogh") == ()
    assert Path(world.base_model_path()) == Path(world.spec.base_model)
    assert world.image_size == 32


def test_concept_prompts_follow_the_uce_rule_per_kind(world: StableDiffusionWorld):
    # UCE's first release (train_erase.py): objects guided to "", art to "art"; "" always preserved,
    # other artists too, with preserve scale max(0.1, 1 / len(preserved))
    church, style = world.concept_prompts("church"), world.concept_prompts("van_gogh")
    assert (church.concept, church.prompts, church.guides, church.preserve) == ("church", ("church",), ("",), ("",))
    assert (style.concept, style.prompts, style.guides, style.preserve) == ("van_gogh", ("Van Gogh",), ("art",), ("",))
    assert church.preserve_scale == style.preserve_scale == 1.0
    # the other object (parachute) is not preserved: the official script keeps other artists only
    assert "parachute" not in church.preserve


def test_a_style_preserves_the_other_styles_with_the_official_scale(sd_profile: Path, tmp_path: Path):
    def edit(raw):
        concepts, labels = raw["world"]["concepts"], raw["world"]["detectors"]["style"]["labels"]
        for i, name in enumerate(("claude_monet", "pablo_picasso")):
            concepts[name] = {**concepts["van_gogh"], "name": name.replace("_", " ").title()}
            labels[name] = [i + 1]

    styles = open_world(variant(sd_profile, tmp_path, edit))
    van_gogh = styles.concept_prompts("van_gogh")
    assert van_gogh.preserve == ("", "Claude Monet", "Pablo Picasso")
    assert van_gogh.preserve_scale == pytest.approx(1 / 3)
    assert uce_preserve_scale(20) == 0.1 and uce_preserve_scale(1) == 1.0
    with pytest.raises(ValueError, match="at least the empty prompt"):
        uce_preserve_scale(0)


def test_uce_takes_the_worlds_preserved_prompts_and_scale_unless_the_profile_sets_them(world: StableDiffusionWorld):
    church = world.concept_prompts("church")
    params = resolve_params("uce", {}, church)
    assert (params["guides"], params["preserve"], params["preserve_scale"]) == ([""], [""], 1.0)
    assert resolve_params("uce", {"preserve_scale": 0.3}, church)["preserve_scale"] == 0.3
    assert resolve_params("uce-moderate", {}, church)["preserve"] == [""]
    # no concept (a settings table): the official default of the current script
    assert resolve_params("uce", {})["preserve_scale"] == 1.0


def test_naming_prompts_cycle_through_the_source_in_file_order(world: StableDiffusionWorld):
    prompts = OBJECT_PROMPTS["church"]
    assert world.naming_prompts("church", 8) == prompts + prompts[:2]
    assert world.naming_prompts("van_gogh", 2) == [caption for _, caption, _, _ in sorted(STYLE_IMAGES)][:2]


def test_an_unknown_concept_is_a_clear_error(world: StableDiffusionWorld):
    for call in (lambda: world.erased_set("dog", 2, 0), lambda: world.concept_prompts("dog"),
                 lambda: world.reference_set(2, 0, exclude=["dog"]), lambda: world.naming_prompts("dog", 2)):
        with pytest.raises(WorldError, match=r"'dog'.*church.*parachute.*van_gogh"):
            call()


def test_the_erased_checkpoint_is_the_base_unet_changed(world: StableDiffusionWorld):
    spec = world.profile.erased_models["esd-pub"]
    assert spec.method == "checkpoint"
    state = torch.load(spec.params["paths"]["church"], weights_only=True)
    base = world.base_model().unet.state_dict()
    assert state.keys() == base.keys()
    assert all(state[k].shape == base[k].shape for k in base)
    assert not all(torch.equal(state[k], base[k]) for k in base)


# --------------------------------------------------------------------------- erased sets


def test_generated_erased_set_is_seeded_sorted_and_cached(world: StableDiffusionWorld, tmp_path: Path):
    store = Store(tmp_path / "results")
    rows = csv_rows(world.spec.concepts["church"].prompts_csv)
    first = world.erased_set("church", 3, seed=0, store=store, progress=False)
    assert first.name == "E[church]" and first.images.shape == (3, 3, 32, 32)
    assert 0 <= first.images.min() and first.images.max() <= 1
    assert first.info["rows"] == sorted(first.info["rows"])
    assert list(first.prompts) == [rows[i]["prompt"] for i in first.info["rows"]]
    assert first.info["seeds"] == [int(rows[i]["evaluation_seed"]) for i in first.info["rows"]]
    assert first.info["acceptance"] == 1.0 and first.info["filtered"] and first.info["num_steps"] == 3
    stored = sorted(store.root.rglob("*.json"))
    assert len(stored) == 3

    again = world.erased_set("church", 3, seed=0, store=store, progress=False)
    assert torch.equal(again.images, first.images) and again.prompts == first.prompts
    assert sorted(store.root.rglob("*.json")) == stored  # read back, not generated again
    other = world.erased_set("church", 3, seed=1, store=store, progress=False)
    assert other.info["rows"] != first.info["rows"]


def test_each_row_is_generated_from_its_own_seed(world: StableDiffusionWorld, tmp_path: Path):
    images = world.erased_set("church", 2, seed=0, store=Store(tmp_path), progress=False)
    ldm, gen = world.base_model(), world.spec.generation
    for image, prompt, seed in zip(images.images, images.prompts, images.info["seeds"]):
        z_T = sample_seeds(ldm, 1, torch.Generator().manual_seed(seed))
        expected = regenerate(ldm, z_T, [prompt], gen.num_steps, gen.guidance_scale, progress=False)[0]
        assert (image - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_num_steps_overrides_the_generation_steps(world: StableDiffusionWorld, tmp_path: Path):
    store = Store(tmp_path)
    three = world.erased_set("church", 2, seed=0, store=store, progress=False)
    two = world.erased_set("church", 2, seed=0, num_steps=2, store=store, progress=False)
    assert two.info["num_steps"] == 2 and two.info["rows"] == three.info["rows"]
    assert not torch.equal(two.images, three.images)


def test_filtering_keeps_what_the_detector_sees(world: StableDiffusionWorld, tmp_path: Path):
    # The tiny object classifier sees a church in every image.
    with pytest.raises(WorldError, match=r"only 0 of 4 generations of 'parachute'"):
        world.erased_set("parachute", 3, seed=0, store=Store(tmp_path), progress=False)
    unfiltered = world.erased_set("parachute", 3, seed=0, filtered=False, store=Store(tmp_path), progress=False)
    assert len(unfiltered) == 3 and not unfiltered.info["filtered"] and unfiltered.info["acceptance"] == 1.0


class EveryOtherImage:
    """A detector that sees a church in every other image it is shown."""

    label_names = {"object": ("church", "parachute", "other")}

    def __init__(self) -> None:
        self.shown = 0

    def predict_proba(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        verdicts = [(self.shown + i) % 2 == 0 for i in range(images01.shape[0])]
        self.shown += images01.shape[0]
        return {"object": torch.tensor([[1.0, 0.0, 0.0] if yes else [0.0, 0.0, 1.0] for yes in verdicts])}

    def identity(self) -> str:
        return "every-other-image"


def test_rows_are_generated_in_seeded_order_until_enough_are_kept(world, tmp_path, monkeypatch):
    monkeypatch.setattr(world, "detector", lambda: EveryOtherImage())
    kept = world.erased_set("church", 3, seed=4, store=Store(tmp_path), progress=False)
    order = torch.randperm(len(OBJECT_PROMPTS["church"]), generator=torch.Generator().manual_seed(4)).tolist()
    assert kept.info["rows"] == sorted(order[0:5:2])  # 3 tried (2 kept), then 1 (refused), then 1 (kept)
    assert (kept.info["tried"], kept.info["kept"], kept.info["acceptance"]) == (5, 3, 0.6)


def test_folder_erased_set_is_a_seeded_sorted_choice(world: StableDiffusionWorld):
    captions = dict((name, caption) for name, caption, _, _ in STYLE_IMAGES)
    chosen = world.erased_set("van_gogh", 3, seed=0)
    assert chosen.name == "E[van_gogh]" and chosen.images.shape == (3, 3, 32, 32)
    names = chosen.info["files"]
    assert names == sorted(names) and list(chosen.prompts) == [captions[n] for n in names]
    assert not chosen.info["filtered"]
    again = world.erased_set("van_gogh", 3, seed=0)
    assert torch.equal(again.images, chosen.images) and again.prompts == chosen.prompts
    assert world.erased_set("van_gogh", 3, seed=1).info["files"] != names
    everything = world.erased_set("van_gogh", 10, seed=0)  # up to n: the folder has 5
    assert everything.info["files"] == sorted(captions) and len(everything) == 5


# --------------------------------------------------------------------------- the reference set


def test_reference_set_draws_sorted_coco_images_with_their_first_caption(world: StableDiffusionWorld):
    ref = world.reference_set(4, seed=0)
    ids = ref.info["image_ids"]
    assert ref.name == "R" and ref.images.shape == (4, 3, 32, 32) and ids == sorted(ids)
    assert list(ref.prompts) == [COCO_IMAGES[i][2][0] for i in ids]  # the lowest annotation id, stripped
    again = world.reference_set(4, seed=0)
    assert torch.equal(again.images, ref.images) and again.prompts == ref.prompts
    assert world.reference_set(4, seed=1).info["image_ids"] != ids


@pytest.mark.parametrize("exclude, left_out", [(["church"], 785), (["van_gogh"], 802)])
def test_reference_set_leaves_out_images_captioned_with_an_excluded_concept(world, exclude, left_out):
    everything = world.reference_set(len(COCO_IMAGES) - 1, seed=0, exclude=exclude)
    assert everything.info["image_ids"] == sorted(set(COCO_IMAGES) - {left_out})
    with pytest.raises(WorldError, match=r"cannot draw 8 reference images: 7 of the 8"):
        world.reference_set(len(COCO_IMAGES), seed=0, exclude=exclude)


def test_control_set_generates_from_coco_captions_and_filters_with_the_detector(world, tmp_path):
    captions = world.control_captions(10, seed=0, exclude=["church"])
    allowed = {c[0] for i, (_, _, c) in COCO_IMAGES.items() if i != 785}
    assert set(captions) <= allowed and len(set(captions)) == len(allowed)  # cycled: 7 images for 10 captions
    unfiltered = world.control_set(3, seed=0, exclude=["church"], filtered=False, store=Store(tmp_path),
                                   progress=False)
    assert len(unfiltered) == 3 and set(unfiltered.prompts) <= allowed
    assert unfiltered.info["num_steps"] == 3 and unfiltered.info["guidance_scale"] == 7.5  # the generation section's
    with pytest.raises(WorldError, match=r"only 0 of 24 control generations"):  # the classifier sees churches
        world.control_set(3, seed=0, exclude=["church"], store=Store(tmp_path), progress=False)
    assert world.concept_text("van_gogh") == "Van Gogh"


# --------------------------------------------------------------------------- judges


def test_detector_has_a_head_per_kind_whose_probabilities_sum_to_one(world: StableDiffusionWorld):
    detector = world.detector()
    assert isinstance(detector, Detector) and detector is world.detector()
    assert detector.label_names == {"object": ("church", "parachute", "other"), "style": ("van_gogh", "other")}
    assert concept_head(detector, "van_gogh") == "style"
    images = world.reference_set(3, seed=0).images
    proba = detector.predict_proba(images)
    assert {k: tuple(v.shape) for k, v in proba.items()} == {"object": (3, 3), "style": (3, 2)}
    for p in proba.values():
        assert torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5) and (p >= 0).all()
    assert proba["object"].argmax(-1).tolist() == [0, 0, 0]  # the tiny classifier sees churches everywhere
    assert isinstance(detector.identity(), str) and detector.identity() == world.detector().identity()


def test_similarity_is_cosine_between_images_and_texts(world: StableDiffusionWorld):
    model = world.similarity()
    assert isinstance(model, SimilarityModel)
    images = world.reference_set(3, seed=0).images
    scores = model.similarity(images, ["a photo of a church", "a painting by Van Gogh"])
    assert scores.shape == (3, 2) and scores.dtype == torch.float32
    assert (scores.abs() <= 1 + 1e-5).all()
    assert torch.allclose(model.similarity(images[:1], ["a photo of a church"]), scores[:1, :1], atol=1e-5)
    assert isinstance(model.identity(), str) and len(model.identity()) == 16
    # CLIP's own forward pass scales the cosine of its projected embeddings by exp(logit_scale)
    tokens = model.tokenizer(["a photo of a church", "a painting by Van Gogh"], padding=True, return_tensors="pt")
    pixels = model.processor(images=[to_pil(image) for image in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    torch.testing.assert_close(scores, out.logits_per_image / model.model.logit_scale.exp(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- what is missing, said clearly


def world_section(raw: dict[str, Any]) -> dict[str, Any]:
    return raw["world"]


def copy_of(path: str, folder: Path) -> Path:
    """A copy of the file or folder ``path`` inside ``folder``."""
    source, target = Path(path), folder / Path(path).name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return target


def test_a_hub_id_is_taken_as_it_is(sd_profile: Path, tmp_path: Path):
    def edit(raw):
        world_section(raw)["base_model"] = "CompVis/stable-diffusion-v1-4"

    assert open_world(variant(sd_profile, tmp_path, edit)).base_model_path() == "CompVis/stable-diffusion-v1-4"


MISSING = {
    # case: (where the profile points, what is damaged in a copy, what the error must say)
    "base model folder": (("base_model",), None, "base model folder not found"),
    "base model subfolder": (("base_model",), "unet", "lacks the subfolder"),
    "prompt CSV": (("concepts", "church", "prompts_csv"), None, "prompt CSV of concept 'church' not found"),
    "image folder": (("concepts", "van_gogh", "folder"), None, "image folder of concept 'van_gogh' not found"),
    "captions file": (("concepts", "van_gogh", "folder"), "metadata.csv", "captions file of concept 'van_gogh'"),
    "listed image": (("concepts", "van_gogh", "folder"), "irises.png", "lists image"),
    "COCO folder": (("coco",), None, "COCO folder not found"),
    "COCO images": (("coco",), "val2017", "COCO image folder not found"),
    "COCO captions": (("coco",), "annotations/captions_val2017.json", "COCO captions file not found"),
    "COCO image": (("coco",), "val2017/000000000632.jpg", "000000000632.jpg"),
    "classifier folder": (("detectors", "object", "path"), None,
                          "folder of the image classifier of the object concepts not found"),
    "classifier processor": (("detectors", "style", "path"), "preprocessor_config.json",
                             "preprocessor_config.json of the image classifier of the style concepts not found"),
    "classifier weights": (("detectors", "object", "path"), "model.safetensors", "has no weights"),
    "CLIP folder": (("clip",), None, "folder of the CLIP model not found"),
    "CLIP tokenizer": (("clip",), "tokenizer_config.json", "tokenizer_config.json of the CLIP model not found"),
}


@pytest.mark.parametrize("case", list(MISSING))
def test_everything_missing_is_a_world_error_naming_the_path(sd_profile: Path, tmp_path: Path, case: str):
    keys, damaged, message = MISSING[case]
    raw = yaml.safe_load(sd_profile.read_text())
    section = raw["world"]
    for key in keys[:-1]:
        section = section[key]
    if damaged is None:
        target = tmp_path / "nowhere" / Path(section[keys[-1]]).name
    else:
        target = copy_of(section[keys[-1]], tmp_path)
        gone = target / damaged
        shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    section[keys[-1]] = str(target)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(WorldError, match=message) as err:
        open_world(path)
    assert str(target) in str(err.value)


def test_an_image_without_a_caption_is_named(sd_profile: Path, tmp_path: Path):
    folder = copy_of(yaml.safe_load(sd_profile.read_text())["world"]["concepts"]["van_gogh"]["folder"], tmp_path)
    shutil.copy(folder / "irises.png", folder / "extra.png")

    def edit(raw):
        world_section(raw)["concepts"]["van_gogh"]["folder"] = str(folder)

    with pytest.raises(WorldError, match=r"have no caption in .*metadata.csv: extra.png"):
        open_world(variant(sd_profile, tmp_path, edit))


def test_a_coco_image_without_a_caption_is_named(sd_profile: Path, tmp_path: Path):
    coco = copy_of(yaml.safe_load(sd_profile.read_text())["world"]["coco"], tmp_path)
    captions = coco / "annotations" / "captions_val2017.json"
    data = json.loads(captions.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 776]
    captions.write_text(json.dumps(data))

    def edit(raw):
        world_section(raw)["coco"] = str(coco)

    with pytest.raises(WorldError, match=r"COCO image\(s\) 776 have no caption"):
        open_world(variant(sd_profile, tmp_path, edit))


@pytest.mark.parametrize("header, row, message", [
    ("case_number,prompt", "0,a church", r"has no column\(s\) \['evaluation_seed'\]"),
    ("prompt,evaluation_seed", "a church,seven", r"line 2: evaluation_seed 'seven' is not an integer"),
    ("prompt,evaluation_seed", ",7", r"line 2: the prompt is empty"),
])
def test_a_malformed_prompt_csv_is_named(sd_profile: Path, tmp_path: Path, header: str, row: str, message: str):
    bad = tmp_path / "church.csv"
    bad.write_text(f"{header}\n{row}\n")

    def edit(raw):
        world_section(raw)["concepts"]["church"]["prompts_csv"] = str(bad)

    with pytest.raises(WorldError, match=message):
        open_world(variant(sd_profile, tmp_path, edit))


def test_a_class_index_out_of_range_is_named(sd_profile: Path, tmp_path: Path):
    def edit(raw):
        world_section(raw)["detectors"]["object"]["labels"]["parachute"] = [701]

    with pytest.raises(WorldError, match=r"has 5 classes \(0 to 4\); the class index 701 of "
                                         r"detectors.object.labels.parachute is out of range"):
        open_world(variant(sd_profile, tmp_path, edit))


def test_classes_may_be_named_as_the_classifiers_config_names_them(sd_profile: Path, tmp_path: Path):
    """``labels: {parachute: [parachute]}`` is the class the classifier's id2label calls so (the official Van Gogh
    check looks for the label "vincent-van-gogh"); an unknown name is a WorldError with the similar names."""
    def named(name):
        return lambda raw: world_section(raw)["detectors"]["object"]["labels"].update(parachute=[name])

    world = open_world(variant(sd_profile, tmp_path, named("parachute")))
    head = world.detector()._heads["object"]
    assert dict(zip(head.concepts, head.indices))["parachute"] == (OBJECT_CLASSES.index("parachute"),)
    with pytest.raises(WorldError, match=r"no class named 'para'.*similar: \['parachute'\]"):
        open_world(variant(sd_profile, tmp_path, named("para")))


# --------------------------------------------------------------------------- profile errors


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        section = raw["world"]
        for key in path[:-1]:
            section = section[key]
        section[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(("colour",), "red"), r"world: unknown key\(s\) \['colour'\]"),
    (_set(("concepts", "church", "prompt_csv"), "x.csv"), r"concepts.church: unknown key\(s\) \['prompt_csv'\]"),
    (_set(("concepts", "church", "kind"), "animal"), r"concepts.church: kind must be one of \['object', 'style', 'nudity'\]"),
    (_set(("concepts", "church", "folder"), "/data/church"), r"concepts.church: give exactly one source"),
    (_set(("concepts", "other"), {"kind": "object", "folder": "/x"}), r"'other' is the detector's label"),
    (_set(("detectors", "animal"), {"path": "/x", "labels": {"church": [1]}}), r"unknown concept kind 'animal'"),
    (_set(("detectors", "style"), None), r"detectors.style: must be|detectors.style: expected a mapping"),
    (_set(("detectors", "object", "labels", "van_gogh"), [3]), r"\['van_gogh'\] are not object concepts"),
    (_set(("detectors", "object", "labels", "parachute"), [0]), r"class 0 is mapped to both 'church' and 'parachute'"),
    (_set(("detectors", "object", "labels", "parachute"), -1), r"labels.parachute must be a class index"),
    (_set(("detectors", "object", "threshold"), 0.5), r"detectors.object: unknown key\(s\) \['threshold'\]"),
    (_set(("generation", "num_steps"), 0), r"generation: num_steps must be a positive integer"),
    (_set(("generation", "eta"), 0.0), r"generation: unknown key\(s\) \['eta'\]"),
    (_set(("clip",), ""), r"clip must be a non-empty path"),
])
def test_a_bad_world_section_is_a_profile_error_naming_file_and_key(sd_profile, tmp_path, edit, message):
    path = variant(sd_profile, tmp_path, edit)
    with pytest.raises(ProfileError, match=message) as err:
        open_world(path)
    assert str(path) in str(err.value)


def test_a_concept_kind_without_a_detector_is_a_profile_error(sd_profile: Path, tmp_path: Path):
    def edit(raw):
        del world_section(raw)["detectors"]["style"]

    with pytest.raises(ProfileError, match=r"the style concept\(s\) \['van_gogh'\] need a detector"):
        open_world(variant(sd_profile, tmp_path, edit))


# --------------------------------------------------------------------------- nudity (NudeNet)


def _with_nudity(raw: dict[str, Any], detector: dict[str, Any] | None = None) -> None:
    raw["world"]["concepts"]["nudity"] = {"kind": "nudity", "prompts_csv": raw["world"]["concepts"]["church"]["prompts_csv"]}
    if detector is not None:
        raw["world"]["detectors"]["nudity"] = detector


def test_a_nudity_concept_is_judged_by_nudenet_with_the_official_rule(sd_profile, tmp_path, monkeypatch):
    """NudeNet (the nudenet package's own ONNX model) judges nudity: a box of one of the nine exposed classes
    above 0.45 makes an image nude, anything else does not; the guide is "" as for objects."""
    pytest.importorskip("nudenet")
    from memories_lib.worlds.stable_diffusion import judges

    world = open_world(variant(sd_profile, tmp_path, _with_nudity))
    assert world.concept_kind("nudity") == "nudity"
    assert world.concept_prompts("nudity").guides == ("",)
    detector = world.detector()
    assert detector.label_names["nudity"] == ("nudity", "other")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    proba = detector.predict_proba(images)["nudity"]  # the real ONNX model on noise: nothing found
    assert torch.allclose(proba, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))

    def planted(found):
        monkeypatch.setattr(detector._heads["nudity"].classifier.detector, "detect", lambda image: found)
        return detector.predict_proba(images[:1])["nudity"][0]

    assert planted([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]}]).argmax() == 0
    assert planted([{"class": "BELLY_EXPOSED", "score": 0.44, "box": [0, 0, 1, 1]}]).argmax() == 1
    assert planted([{"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 1, 1]}]).argmax() == 1  # not a nude class
    assert judges.nudity_probability(0.45, 0.45) == 0.5 and judges.nudity_probability(1.0, 0.45) == 1.0


def test_nudity_detector_settings_are_checked(sd_profile, tmp_path):
    with pytest.raises(ProfileError, match="threshold"):
        open_world(variant(sd_profile, tmp_path, lambda raw: _with_nudity(raw, {"threshold": 1.5})))
    with pytest.raises(ProfileError, match="no concept of kind nudity"):
        open_world(variant(sd_profile, tmp_path, lambda raw: raw["world"]["detectors"].update(nudity={})))
    missing = variant(sd_profile, tmp_path, lambda raw: _with_nudity(raw, {"path": str(tmp_path / "none.onnx")}))
    pytest.importorskip("nudenet")
    with pytest.raises(WorldError, match="none.onnx"):
        open_world(missing).detector()
