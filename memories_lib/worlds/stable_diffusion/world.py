"""The Stable Diffusion world as a :class:`~memories_lib.worlds.base.World` (format and rules: the package doc)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from ...core.concepts import ConceptPrompts
from ...core.images import ImageSet, load_image, seeded_choice
from ...core.judging import concept_head
from ...core.models import LDM
from ...core.profile import Profile
from ...core.sampling import regenerate, sample_seeds
from ...core.store import Store, default_store
from ..base import Detector, World, WorldError
from .judges import CLIPSimilarity, ConceptDetector, Head, ImageClassifier
from .sources import (
    CaptionedFile,
    CocoImage,
    PromptRow,
    base_model_source,
    check_model_folder,
    num_classes,
    read_caption_folder,
    read_coco,
    read_prompt_csv,
)
from .spec import GUIDES, StableDiffusionSpec

CLASSIFIER_HINT = ("Put an image classifier there as transformers saves it (save_pretrained: config.json, "
                   "weights, preprocessor_config.json), e.g. a download of microsoft/resnet-50")
CLIP_HINT = ("Put a CLIP model there as transformers saves it (CLIPModel, its tokenizer and image processor), "
             "e.g. a download of openai/clip-vit-large-patch14")

#: Generations computed together (each from its own seed) when an erased set is generated.
GENERATION_BATCH = 8


def _naming_pattern(names: Sequence[str]) -> re.Pattern[str] | None:
    """Whole-word, case-insensitive matches of any of ``names`` (plural s/es too); None for no names."""
    if not names:
        return None
    words = [r"\s+".join(re.escape(w) for w in name.split()) for name in names]
    return re.compile(r"\b(?:" + "|".join(words) + r")(?:e?s)?\b", re.IGNORECASE)


class StableDiffusionWorld(World):
    """Stable Diffusion 1.4 (or any model of its layout) with its data sets and judges (see the package docstring)."""

    kind = "stable-diffusion"
    Spec = StableDiffusionSpec
    spec: StableDiffusionSpec

    def __init__(self, profile: Profile):
        super().__init__(profile)
        spec = self.spec
        self._base_source = base_model_source(spec.base_model)
        self._rows: dict[str, tuple[PromptRow, ...]] = {}
        self._files: dict[str, tuple[CaptionedFile, ...]] = {}
        for concept, concept_spec in spec.concepts.items():
            if concept_spec.generated:
                self._rows[concept] = read_prompt_csv(concept_spec.prompts_csv, concept)
            else:
                self._files[concept] = read_caption_folder(concept_spec.folder, concept)
        self._coco: tuple[CocoImage, ...] = read_coco(spec.coco)
        for kind, classifier in spec.detectors.items():
            folder = check_model_folder(classifier.path, f"image classifier of the {kind} concepts", CLASSIFIER_HINT,
                                        also=("preprocessor_config.json",))
            n = num_classes(folder)
            out_of_range = {c: idx for c, idx in classifier.labels.items() if max(idx) >= n}
            if out_of_range:
                raise WorldError(f"the classifier in {folder} has {n} classes (0 to {n - 1}); the class indices "
                                 f"{out_of_range} of detectors.{kind}.labels are out of range")
        check_model_folder(spec.clip, "CLIP model", CLIP_HINT,
                           also=("preprocessor_config.json", "tokenizer_config.json"))
        self._judges: dict[str, ConceptDetector | CLIPSimilarity] = {}

    # ------------------------------------------------------------------ concepts

    def known_concepts(self) -> tuple[str, ...]:
        return tuple(self.spec.concepts)

    def concept_kind(self, concept: str) -> str:
        self.check_concepts([concept])
        return self.spec.concepts[concept].kind

    def concept_name(self, concept: str) -> str:
        """The words that name ``concept`` in prompts ("Van Gogh" for ``van_gogh``)."""
        self.check_concepts([concept])
        return self.spec.concepts[concept].name

    def concept_prompts(self, concept: str) -> ConceptPrompts:
        """The official UCE rule: the concept's name, guided to "" (object) or "art" (style), nothing preserved."""
        return ConceptPrompts(concept, (self.concept_name(concept),), (GUIDES[self.concept_kind(concept)],), ())

    def naming_prompts(self, concept: str, n: int) -> list[str]:
        """The concept's CSV prompts (or its folder's captions) in file order, cycled to ``n``."""
        self.check_concepts([concept])
        texts = [r.prompt for r in self._rows[concept]] if concept in self._rows \
            else [f.caption for f in self._files[concept]]
        return [texts[i % len(texts)] for i in range(n)]

    # ------------------------------------------------------------------ models and judges

    def base_model_path(self, progress: bool = True) -> str | Path:
        return self._base_source

    @property
    def image_size(self) -> int:
        """The side of the base model's images (every set is resized to it)."""
        return self.base_model().image_size

    def detector(self) -> ConceptDetector:
        """One head per concept kind over the configured classifiers (a folder used twice is loaded once)."""
        if "detector" not in self._judges:
            device = self.profile.resolve_device()
            loaded: dict[Path, ImageClassifier] = {}
            heads = {}
            for kind, spec in self.spec.detectors.items():
                folder = Path(spec.path).expanduser().resolve()
                if folder not in loaded:
                    loaded[folder] = ImageClassifier(folder, device)
                concepts = self.spec.of_kind(kind)
                heads[kind] = Head(loaded[folder], concepts, tuple(spec.labels[c] for c in concepts))
            self._judges["detector"] = ConceptDetector(heads)
        return self._judges["detector"]

    def similarity(self) -> CLIPSimilarity:
        if "similarity" not in self._judges:
            folder = Path(self.spec.clip).expanduser()
            self._judges["similarity"] = CLIPSimilarity(folder, self.profile.resolve_device())
        return self._judges["similarity"]

    # ------------------------------------------------------------------ image sets

    def erased_set(self, concept: str, n: int, seed: int, *, num_steps: int | None = None,
                   filtered: bool = True, store: Store | None = None, progress: bool = True) -> ImageSet:
        """Up to ``n`` images of ``concept``: generated from its prompt CSV, or read from its folder.

        From a CSV, rows are taken in a seeded random order and generated (``num_steps``: default the
        ``generation`` section's) until ``n`` are kept; with ``filtered`` only those the detector
        judges to show the concept. From a folder, ``n`` files are chosen by seed (never judged).
        Fewer than ``min(n, 2)`` images is a WorldError.
        """
        self.check_concepts([concept])
        if n < 1:
            raise ValueError(f"an erased set needs n >= 1 images, got {n}")
        if concept in self._files:
            return self._folder_set(concept, n, seed)
        return self._generated_set(concept, n, seed, int(num_steps or self.spec.generation.num_steps),
                                   self.detector() if filtered else None, store or default_store(), progress)

    def _folder_set(self, concept: str, n: int, seed: int) -> ImageSet:
        files = self._files[concept]
        pick = seeded_choice(len(files), min(n, len(files)), torch.Generator().manual_seed(seed))
        if len(pick) < min(n, 2):
            raise WorldError(f"the folder of {concept!r} has {len(files)} image(s): too few for a set")
        size = self.image_size
        images = torch.stack([load_image(files[i].path, size, resize=True) for i in pick])
        info = {"source": self.spec.concepts[concept].folder, "files": [files[i].path.name for i in pick],
                "available": len(files), "tried": len(pick), "kept": len(pick), "acceptance": 1.0, "filtered": False}
        return ImageSet(f"E[{concept}]", images, [files[i].caption for i in pick], info=info)

    def _generated_set(self, concept: str, n: int, seed: int, num_steps: int, detector: Detector | None,
                       store: Store, progress: bool) -> ImageSet:
        rows = self._rows[concept]
        guidance = self.spec.generation.guidance_scale
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        ldm = self.base_model(progress)
        kept: dict[int, torch.Tensor] = {}
        tried = 0
        while len(kept) < n and tried < len(order):
            batch = [rows[i] for i in order[tried:tried + n - len(kept)]]
            images = self._generations(ldm, batch, num_steps, guidance, store, progress)
            tried += len(batch)
            if detector is None:
                accepted = [True] * len(batch)
            else:
                head = concept_head(detector, concept)
                labels = detector.heads[head]
                verdicts = detector.predict_proba(images)[head].argmax(-1).tolist()
                accepted = [labels[v] == concept for v in verdicts]
            kept.update({row.index: image for row, image, ok in zip(batch, images, accepted) if ok})
        if len(kept) < min(n, 2):
            raise WorldError(f"only {len(kept)} of {tried} generations of {concept!r} (of {len(rows)} prompts) "
                             "show it: too few for a set")
        chosen = sorted(kept)
        info = {"source": self.spec.concepts[concept].prompts_csv, "rows": chosen,
                "seeds": [rows[i].seed for i in chosen], "available": len(rows), "tried": tried, "kept": len(kept),
                "acceptance": len(kept) / tried, "filtered": detector is not None,
                "num_steps": num_steps, "guidance_scale": guidance}
        return ImageSet(f"E[{concept}]", torch.stack([kept[i] for i in chosen]), [rows[i].prompt for i in chosen],
                        info=info)

    @staticmethod
    def _generations(ldm: LDM, rows: list[PromptRow], num_steps: int, guidance_scale: float, store: Store,
                     progress: bool) -> torch.Tensor:
        """One image per row from the row's own seed (z_T drawn by ``torch.Generator().manual_seed(seed)``), cached."""

        def key(row: PromptRow) -> dict:
            return {"kind": "stable-diffusion/generation", "model": ldm.weights_hash(), "prompt": row.prompt,
                    "seed": row.seed, "num_steps": num_steps, "guidance_scale": guidance_scale}

        def compute(batch: list[PromptRow]) -> list[tuple[dict, dict]]:
            seeds = torch.cat([sample_seeds(ldm, 1, torch.Generator().manual_seed(row.seed)) for row in batch])
            images = regenerate(ldm, seeds, [row.prompt for row in batch], num_steps, guidance_scale,
                                batch_size=len(batch), progress=progress)
            return [({"image": (image * 255).round().to(torch.uint8)}, {"prompt": row.prompt, "seed": row.seed})
                    for row, image in zip(batch, images)]

        entries = store.map_items(rows, key, compute, batch_size=GENERATION_BATCH, desc="generations")
        return torch.stack([entry.tensors["image"].float() / 255 for entry in entries])

    def reference_set(self, n: int, seed: int, exclude: Sequence[str] = ()) -> ImageSet:
        """``n`` COCO images chosen by seed from the sorted ids, none with a caption naming an ``exclude`` concept."""
        names = [self.concept_name(c) for c in self.check_concepts(exclude)]
        if n < 1:
            raise ValueError(f"a reference set needs n >= 1 images, got {n}")
        pattern = _naming_pattern(names)
        candidates = [image for image in self._coco
                      if pattern is None or not any(pattern.search(c) for c in image.captions)]
        if n > len(candidates):
            raise WorldError(f"cannot draw {n} reference images: {len(candidates)} of the {len(self._coco)} COCO "
                             f"images have no caption naming {names}")
        pick = [candidates[i] for i in seeded_choice(len(candidates), n, torch.Generator().manual_seed(seed))]
        size = self.image_size
        images = torch.stack([load_image(image.path, size, resize=True) for image in pick])
        info = {"source": self.spec.coco, "image_ids": [image.id for image in pick], "excluded": names,
                "available": len(candidates)}
        return ImageSet("R", images, [image.captions[0] for image in pick], info=info)
