"""The World interface: everything a chapter needs to know about a world, and nothing about the chapters.

A world is where the experiments happen: the embedded shapes world, a tiny random one for the
tests, Stable Diffusion 1.4 with its data sets. It gives

* the base model (prepared on first use: trained, built or loaded) and a way to load others;
* its concepts, what kind each is (the detector head that judges it: "shape", "background",
  "object", ...), the other concepts of that kind, and for each concept the prompts an erasure
  method receives (:class:`~memories_lib.core.concepts.ConceptPrompts`);
* captioned image sets, selected by seed and sorted, never in file-system order: the erased set of
  a concept, a reference set without the erased concepts, and a control set: the base model's own
  generations from captions without the erased concepts (:meth:`World.control_set`);
* a concept detector and an image-text similarity model (:class:`Detector`, :class:`SimilarityModel`);
* whether its numbers are to be interpreted (the profile's ``interpret``).

A world imports only the core. :func:`memories_lib.worlds.open_world` is what chapters call.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch

from ..core.concepts import ConceptPrompts
from ..core.images import ImageSet
from ..core.judging import concept_head, judged_generations
from ..core.models import LDM, load_ldm
from ..core.profile import Profile, ProfileError, check_keys
from ..core.store import default_store


class WorldError(ValueError):
    """A world that cannot be opened or used as asked: an unknown concept, a missing folder or file."""


@runtime_checkable
class Detector(Protocol):
    """A concept detector: class probabilities from one or more heads.

    ``label_names`` maps a head's name to its label names; a concept is judged by the head that
    has it as a label. ``identity()`` is a content hash of the detector (what tells two detectors apart).
    """

    @property
    def label_names(self) -> Mapping[str, Sequence[str]]: ...

    def predict_proba(self, images01: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def identity(self) -> str: ...


@runtime_checkable
class SimilarityModel(Protocol):
    """An image-text similarity model (CLIP or a stand-in): cosine scores, (n_images, n_texts)."""

    def similarity(self, images01: torch.Tensor, texts: Sequence[str]) -> torch.Tensor: ...

    def identity(self) -> str: ...


class World(abc.ABC):
    """A world opened from a profile (see the module docstring). Subclasses set ``kind`` and ``Spec``.

    ``Spec`` is a frozen dataclass of the world's own profile section (``world:`` without ``kind``);
    unknown keys are errors naming the profile and the key.
    """

    kind: ClassVar[str]
    Spec: ClassVar[type]
    ERASED_SET_TEXT: ClassVar[str]
    REFERENCE_SET_TEXT: ClassVar[str]
    CONTROL_SET_TEXT: ClassVar[str]

    def __init__(self, profile: Profile):
        self.profile = profile
        self.spec = self.parse_spec(profile)
        self._base: LDM | None = None
        unknown = [c for c in profile.concepts if c not in self.known_concepts()]
        if unknown:
            raise WorldError(
                f"{profile.source}: concepts {unknown} are not concepts of this {self.kind} world; "
                f"it knows {list(self.known_concepts())}"
            )

    @classmethod
    def parse_spec(cls, profile: Profile) -> Any:
        """The world's section of ``profile``, checked and typed."""
        where = f"{profile.source}: world"
        options = dict(profile.world.options)
        check_keys(cls.Spec, options, where)
        try:
            return cls.Spec(**options)
        except (TypeError, ValueError) as err:
            raise ProfileError(f"{where}: {err}") from err

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile.name!r})"

    # ------------------------------------------------------------------ about the world

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def interpret(self) -> bool:
        """Whether this world's numbers mean something (False: random weights, the code only runs)."""
        return self.profile.interpret

    @property
    def concepts(self) -> tuple[str, ...]:
        """The concepts the profile erases (a subset of :meth:`known_concepts`)."""
        return self.profile.concepts

    @abc.abstractmethod
    def known_concepts(self) -> tuple[str, ...]:
        """Every concept this world can name, detect and erase."""

    def check_concepts(self, concepts: Sequence[str]) -> list[str]:
        """``concepts`` as a list; an unknown one raises WorldError listing the known ones (before any work)."""
        concepts = list(concepts)
        unknown = [c for c in concepts if c not in self.known_concepts()]
        if unknown:
            raise WorldError(f"unknown concept(s) {unknown}; the {self.name} world knows {list(self.known_concepts())}")
        return concepts

    @abc.abstractmethod
    def concept_kind(self, concept: str) -> str:
        """The kind of ``concept``: the detector head that judges it ("shape", "background", "object", ...)."""

    def rivals(self, concept: str) -> tuple[str, ...]:
        """The other known concepts of ``concept``'s kind (what an erasure should leave alone)."""
        kind = self.concept_kind(concept)
        return tuple(c for c in self.known_concepts() if c != concept and self.concept_kind(c) == kind)

    @abc.abstractmethod
    def concept_prompts(self, concept: str) -> ConceptPrompts:
        """The prompts an erasure of ``concept`` is given: prompts naming it, their guides, prompts to keep."""

    @abc.abstractmethod
    def naming_prompts(self, concept: str, n: int) -> list[str]:
        """``n`` prompts that name ``concept``, in a fixed order (the usual test of an erasure judges them)."""

    @abc.abstractmethod
    def caption_sample(self, concept: str, n: int, seed: int) -> list[str]:
        """``n`` captions naming ``concept``, drawn with ``seed`` (varied, as a data set's captions are)."""

    def concept_text(self, concept: str) -> str:
        """The words that name ``concept`` to the similarity model (default: the concept itself)."""
        self.check_concepts([concept])
        return concept

    @abc.abstractmethod
    def control_captions(self, n: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
        """``n`` captions naming none of the concepts in ``exclude``, drawn with ``seed`` (for :meth:`control_set`)."""

    def attribute_phrase(self, attributes: Mapping[str, str]) -> str:
        """Words naming a combination of detector labels (head -> label), for the similarity model.

        The default joins the labels ("church", "church van gogh"); a world with a caption grammar says
        it in that grammar (the shapes world: ``{"colour": "red"}`` -> "a red shape").
        """
        if not attributes:
            raise ValueError("attribute_phrase needs at least one head and label")
        return " ".join(str(label) for label in attributes.values())

    def drawn_set(self, n: int, seed: int, allowed: Mapping[str, Sequence[str]] | None = None) -> ImageSet:
        """``n`` images drawn by the world itself (not generated), each detector head's label uniform over
        ``allowed[head]`` (default: every label), everything else drawn as usual; ``info["labels"]``: the true
        label of each image per head. Only a world with a renderer has this; others raise WorldError."""
        raise WorldError(f"the {self.kind} world draws no images of chosen attributes itself (it has no renderer)")

    def describe(self) -> dict[str, str]:
        """One sentence each on where this world's erased, reference and control sets come from (for the chapters)."""
        return {"erased_set": self.ERASED_SET_TEXT, "reference_set": self.REFERENCE_SET_TEXT,
                "control_set": self.CONTROL_SET_TEXT}

    # ------------------------------------------------------------------ models

    @abc.abstractmethod
    def base_model_path(self, progress: bool = True) -> str | Path:
        """Where the base model lives (a diffusers folder or hub id), built or trained first if needed."""

    def load_model(self, source: str | Path) -> LDM:
        """A model of this world (the base or an erased variant) on the profile's device and dtype."""
        return load_ldm(source, device=self.profile.resolve_device(), dtype=self.profile.torch_dtype())

    def base_model(self, progress: bool = True) -> LDM:
        """The base (unerased) model, loaded once per world object."""
        if self._base is None:
            self._base = self.load_model(self.base_model_path(progress=progress))
        return self._base

    def training_seed(self) -> int | None:
        """The seed this project trained the world's models with; None for a world it does not train."""
        return None

    def generation_settings(self) -> tuple[int, float]:
        """Sampling steps and guidance scale of the world's own generations (its erased and control sets)."""
        return int(self.profile.num_inference_steps), float(self.profile.guidance_scale)

    def is_prepared(self) -> bool:
        """Whether :meth:`prepare` has nothing left to build or train (a cheap look at the cache)."""
        return True

    def prepare(self, progress: bool = True) -> None:
        """Build, train or check everything the world needs before a chapter runs (models, judges)."""
        self.base_model_path(progress=progress)
        self.detector()
        self.similarity()

    # ------------------------------------------------------------------ judges

    @abc.abstractmethod
    def detector(self) -> Detector:
        """The concept detector (the shapes classifier; a configured classifier for Stable Diffusion)."""

    @abc.abstractmethod
    def similarity(self) -> SimilarityModel:
        """The image-text similarity model (the shapes contrastive model; CLIP for Stable Diffusion)."""

    # ------------------------------------------------------------------ image sets

    @abc.abstractmethod
    def erased_set(self, concept: str, n: int, seed: int, *, num_steps: int | None = None,
                   filtered: bool = True, store: Any = None, progress: bool = True) -> ImageSet:
        """Up to ``n`` captioned images of ``concept`` (``info["acceptance"]``: the share kept by the detector).

        ``filtered``: keep only images the detector judges to show the concept (where the world
        generates them); ``num_steps``: sampling steps where the world generates (default: the profile's).
        """

    @abc.abstractmethod
    def reference_set(self, n: int, seed: int, exclude: Sequence[str] = ()) -> ImageSet:
        """``n`` captioned images showing none of the concepts in ``exclude``."""

    def control_set(self, n: int, seed: int, exclude: Sequence[str] = (), *, num_steps: int | None = None,
                    filtered: bool = True, store: Any = None, progress: bool = True, attempts: int = 4) -> ImageSet:
        """Up to ``n`` generations of the base model from :meth:`control_captions`, showing none of ``exclude``.

        Made like the erased set, so that it differs from it only in the concept: the same model,
        sampler and settings (:meth:`generation_settings`, ``num_steps`` overriding the steps), up to
        ``attempts`` rounds of 2n seeded captions, and with ``filtered`` an image is kept only when
        the detector sees none of the ``exclude`` concepts in it. ``info["acceptance"]``: the share
        kept. Its seeds z_T are drawn apart from the erased set's. Fewer than 2 images is a WorldError.
        """
        exclude = self.check_concepts(exclude)
        if n < 1:
            raise ValueError(f"a control set needs n >= 1 images, got {n}")
        store = store or default_store()
        steps, guidance = self.generation_settings()
        steps = int(num_steps or steps)
        detector = self.detector()
        heads = {c: concept_head(detector, c) for c in exclude}
        kept_images: list[torch.Tensor] = []
        kept_prompts: list[str] = []
        tried = 0
        for attempt in range(attempts):
            m = 2 * n
            captions = self.control_captions(m, seed + 1000 * attempt, exclude)
            judged = judged_generations(self.base_model(progress), detector, captions, seed=seed + 7919 + attempt,
                                        num_steps=steps, guidance_scale=guidance, store=store, progress=progress)
            for i in range(m):
                if not filtered or not any(judged.labels[head][i] == c for c, head in heads.items()):
                    kept_images.append(judged.images[i])
                    kept_prompts.append(captions[i])
            tried += m
            if len(kept_images) >= n:
                break
        if len(kept_images) < 2:
            raise WorldError(f"only {len(kept_images)} of {tried} control generations show none of {exclude}: "
                             "too few for a set")
        k = min(n, len(kept_images))
        info = {"acceptance": len(kept_images) / tried, "tried": tried, "kept": len(kept_images),
                "excluded": list(exclude), "filtered": filtered, "num_steps": steps, "guidance_scale": guidance}
        return ImageSet("R_control", torch.stack(kept_images[:k]), kept_prompts[:k], info=info)


def require_file(path: str | Path, what: str, hint: str) -> Path:
    """``path`` as a Path if it exists; else WorldError saying what belongs there."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WorldError(f"{what} not found: {path}. {hint}")
    return path


__all__ = ["Detector", "SimilarityModel", "World", "WorldError", "require_file"]
