"""A tiny Stable Diffusion world in the real layouts, built in seconds into a folder (for tests).

Everything a ``stable-diffusion`` profile names, at toy sizes and with random weights:

* ``models/stable-diffusion``: a diffusers-layout LDM (``build_tiny_ldm``, 32x32 images) whose word
  tokenizer knows the prompts' words; ``models/esd-church.pt``: its UNet state dict slightly
  changed (a stand-in for a published erased checkpoint);
* ``data/church.csv`` and ``data/parachute.csv``: prompt lists in the UnlearnDiffAtk layout
  (``case_number,prompt,evaluation_seed,classes``); ``data/van_gogh``: captioned images of
  several sizes with ``metadata.csv``; ``data/coco``: a COCO-layout folder (``val2017/*.jpg``,
  ``annotations/captions_val2017.json``, three captions per image, annotation ids not in file
  order; image 785 is captioned with a church, image 802 with Van Gogh);
* ``models/resnet``: a random ResNet image classifier (ConvNeXt image processor, as
  microsoft/resnet-50 has) for the objects, whose bias makes it see a church in every image (so a
  filtered church set keeps everything and a filtered parachute set nothing);
  ``models/style-vit``: a random ViT classifier for the style; ``models/clip``: a random CLIPModel
  with a word tokenizer and a CLIP image processor.

:func:`build_tiny_sd_world` returns the profile (``tiny-sd.yaml``) that points at all of it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers import UNet2DConditionModel
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    ConvNextImageProcessorPil,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from memories_lib.core.models import TINY_WORDS, build_tiny_ldm
from memories_lib.core.tokenizer import SPECIAL_TOKENS, build_word_tokenizer

IMAGE_SIZE = 32

#: The object concepts' prompts (UnlearnDiffAtk CSVs), their first seed, and their ImageNet-like class.
OBJECT_PROMPTS: dict[str, list[str]] = {
    "church": ["a photo of a church", "a church on a hill", "an old church in the snow", "a church with a red door",
               "a white church by the sea", "a picture of a church at night"],
    "parachute": ["a photo of a parachute", "a parachute in the blue sky", "a red parachute over the sea",
                  "a parachute on the grass"],
}
OBJECT_CLASSES = ("church", "parachute", "tench", "golf ball", "garbage truck")

#: The style concept's captioned images: (file name, caption, width, height).
STYLE_IMAGES = [
    ("starry_night.png", "a painting of a starry night by van gogh", 40, 32),
    ("sunflowers.png", "sunflowers in a vase by van gogh", 32, 48),
    ("wheat_field.jpg", "a wheat field with cypresses by van gogh", 36, 36),
    ("bedroom.png", "the bedroom in arles by van gogh", 64, 64),
    ("irises.png", "irises in a garden by van gogh", 32, 32),
]
STYLE_CLASSES = ("vincent-van-gogh", "claude-monet", "pablo-picasso")

#: COCO images: id -> (width, height, captions in annotation-id order).
COCO_IMAGES: dict[int, tuple[int, int, list[str]]] = {
    139: (48, 40, ["a living room with a television", "a room with chairs and a tv", "a small living room"]),
    285: (40, 48, ["a big brown bear sitting in the grass", "a bear in a field", "a brown bear"]),
    632: (36, 36, ["a bedroom with a bed and a window", "a bed next to a window", "a neat bedroom"]),
    724: (44, 36, ["a stop sign on a street corner", "a red stop sign", "a street with a stop sign"]),
    776: (32, 32, ["three teddy bears on a table", "teddy bears sitting together", "a group of toy bears"]),
    785: (48, 32, ["a woman skiing down a hill", "a skier near an old Church", "a person on skis"]),
    802: (32, 40, ["a kitchen with an oven", "a kitchen wall with a print after Van Gogh", "an oven and a sink"]),
    872: (40, 40, ["a man playing baseball", "a batter swinging at a ball", "a baseball game"]),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _words(*texts: str) -> list[str]:
    return sorted({w.strip(".,").lower() for text in texts for w in text.split()})


def _random_image(path: Path, width: int, height: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _write_prompt_csv(path: Path, prompts: list[str], first_seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_number", "prompt", "evaluation_seed", "classes"])
        for i, prompt in enumerate(prompts):
            writer.writerow([i, prompt, first_seed + 37 * i, path.stem])
    return path


def _write_style_folder(folder: Path, rng: np.random.Generator) -> Path:
    with open(_mkdir(folder) / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for name, caption, width, height in STYLE_IMAGES:
            _random_image(folder / name, width, height, rng)
            writer.writerow([name, caption])
    return folder


def _write_coco(root: Path, rng: np.random.Generator) -> Path:
    images, annotations = [], []
    for image_id, (width, height, captions) in COCO_IMAGES.items():
        name = f"{image_id:012d}.jpg"
        _random_image(root / "val2017" / name, width, height, rng)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k, caption in enumerate(captions):
            annotations.append({"id": 10 * image_id + k, "image_id": image_id, "caption": caption + " "})
    annotations.reverse()  # listed from the last caption: the first caption is the lowest id, not the first listed
    data = {"info": {"description": "tiny COCO-layout captions"}, "images": images, "annotations": annotations}
    (_mkdir(root / "annotations") / "captions_val2017.json").write_text(json.dumps(data))
    return root


def _labels(names: tuple[str, ...]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _write_resnet(folder: Path) -> Path:
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          **_labels(OBJECT_CLASSES))
    model = ResNetForImageClassification(config)
    with torch.no_grad():
        model.classifier[-1].bias[OBJECT_CLASSES.index("church")] = 20.0  # it sees a church everywhere
    model.save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=0.875).save_pretrained(folder)
    return folder


def _write_vit(folder: Path) -> Path:
    config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, **_labels(STYLE_CLASSES))
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def _write_clip(folder: Path, words: list[str]) -> Path:
    max_length = 16
    tokenizer = build_word_tokenizer(words, max_length=max_length)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=max_length, pad_token_id=SPECIAL_TOKENS["<pad>"],
                bos_token_id=SPECIAL_TOKENS["<bos>"], eos_token_id=SPECIAL_TOKENS["<eos>"])
    vision = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def _write_erased_unet(base: Path, path: Path) -> Path:
    """The base UNet's state dict with every weight nudged: a full-UNet ``.pt`` as UnlearnDiffAtk publishes."""
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    generator = torch.Generator().manual_seed(1)
    state = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in unet.state_dict().items()}
    torch.save(state, path)
    return path


def build_tiny_sd_world(root: str | Path, name: str = "tiny-sd") -> Path:
    """Build the tiny world under ``root`` (see the module docstring); returns its profile YAML."""
    root = _mkdir(Path(root).resolve())
    rng = np.random.default_rng(0)
    texts = [p for prompts in OBJECT_PROMPTS.values() for p in prompts] + [c for _, c, _, _ in STYLE_IMAGES] \
        + [c for _, _, captions in COCO_IMAGES.values() for c in captions] + ["art", "van gogh"]
    words = sorted(set(TINY_WORDS) | set(_words(*texts)))
    models, data = _mkdir(root / "models"), _mkdir(root / "data")
    base = build_tiny_ldm(models / "stable-diffusion", seed=0, image_size=IMAGE_SIZE, words=words)
    csvs = {concept: _write_prompt_csv(data / f"{concept}.csv", prompts, first_seed=100 * (i + 1))
            for i, (concept, prompts) in enumerate(OBJECT_PROMPTS.items())}
    style, coco = _write_style_folder(data / "van_gogh", rng), _write_coco(data / "coco", rng)
    torch.manual_seed(0)  # the judges' random weights
    resnet, vit = _write_resnet(models / "resnet"), _write_vit(models / "style-vit")
    clip = _write_clip(models / "clip", words)
    erased = _write_erased_unet(base, models / "esd-church.pt")
    world = {
        "kind": "stable-diffusion",
        "base_model": str(base),
        "concepts": {
            "church": {"kind": "object", "prompts_csv": str(csvs["church"])},
            "parachute": {"kind": "object", "prompts_csv": str(csvs["parachute"])},
            "van_gogh": {"kind": "style", "name": "Van Gogh", "folder": str(style)},
        },
        "coco": str(coco),
        "detectors": {
            "object": {"path": str(resnet),
                       "labels": {"church": [OBJECT_CLASSES.index("church")],
                                  "parachute": [OBJECT_CLASSES.index("parachute")]}},
            "style": {"path": str(vit),
                      "labels": {"van_gogh": [STYLE_CLASSES.index("vincent-van-gogh")]}},
        },
        "clip": str(clip),
        "generation": {"num_steps": 3, "guidance_scale": 7.5},
    }
    profile = {
        "name": name,
        "description": "a tiny Stable Diffusion world: random models in the real layouts (tests)",
        "interpret": False,
        "model": {"num_inference_steps": 4, "guidance_scale": 7.5, "device": "cpu", "dtype": "float32"},
        "world": world,
        "seed": 0,
        "concepts": ["church", "van_gogh"],
        "erased_models": {
            "uce": {},
            "esd-pub": {"method": "checkpoint",
                        "params": {"paths": {"church": str(erased), "van_gogh": str(erased)}}},
        },
        # The tiny object classifier sees a church everywhere: a control set without churches keeps nothing filtered.
        "parameters": {"num_images": 3, "num_steps": 4, "filter_erased_set": True, "filter_control_set": False},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


#: The concepts of the shipped sd14 profile, the stem of their prompt CSV, and their ImageNet index (objects).
SD14_CONCEPTS = {"nudity": "nudity", "church": "church", "parachute": "parachute", "tench": "tench",
                 "garbage_truck": "garbage_truck", "van_gogh": "vangogh"}
SD14_IMAGENET = {"church": 497, "parachute": 701, "tench": 0, "garbage_truck": 569}
SD14_UNET_METHODS = ("esd", "fmn", "spm", "salun", "scissorhands", "erasediff")


def build_sd14_layout(root: str | Path) -> Path:
    """The folder the shipped ``sd14`` profile reads through ``$MEMORIES_SD14`` (its layout is in the profile's
    comments), with the tiny world's random models: point MEMORIES_SD14 at the returned folder."""
    import shutil

    root = _mkdir(Path(root).resolve())
    rng = np.random.default_rng(0)
    prompts = {concept: [f"a photo of {concept.replace('_', ' ')}", f"a {concept.replace('_', ' ')} in the park",
                         f"an old picture of {concept.replace('_', ' ')}"] for concept in SD14_CONCEPTS}
    texts = [p for ps in prompts.values() for p in ps] + [c for _, _, captions in COCO_IMAGES.values() for c in captions]
    words = sorted(set(TINY_WORDS) | set(_words(*texts)) | {"van", "gogh", "art", "nudity"})
    base = build_tiny_ldm(root / "stable-diffusion-v1-4", seed=0, image_size=IMAGE_SIZE, words=words)
    for i, (concept, stem) in enumerate(SD14_CONCEPTS.items()):
        _write_prompt_csv(root / "prompts" / f"{stem}.csv", prompts[concept], first_seed=100 * (i + 1))
    _write_coco(root / "coco", rng)
    torch.manual_seed(0)
    imagenet = [f"class_{i}" for i in range(1000)]
    for concept, index in SD14_IMAGENET.items():
        imagenet[index] = concept.replace("_", " ")
    resnet = _mkdir(root / "detectors" / "resnet-50")
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                              layer_type="basic", **_labels(tuple(imagenet)))).save_pretrained(resnet)
    ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=0.875).save_pretrained(resnet)
    _write_vit(root / "detectors" / "style-classifier")
    _write_clip(root / "clip", words)
    checkpoints = _mkdir(root / "checkpoints")
    erased = _write_erased_unet(base, checkpoints / "erased.pt")
    for method in SD14_UNET_METHODS:
        for concept, stem in SD14_CONCEPTS.items():
            if stem == "vangogh" and method in ("salun", "scissorhands", "erasediff"):
                continue
            target = _mkdir(checkpoints / method) / f"{stem}.pt"
            shutil.copyfile(erased, target)
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    with torch.no_grad():
        next(w for n, w in encoder.named_parameters() if n.endswith("final_layer_norm.bias")).add_(0.01)
    for stem in SD14_CONCEPTS.values():
        encoder.save_pretrained(checkpoints / "advunlearn" / f"{stem}_unlearned")
    return root
