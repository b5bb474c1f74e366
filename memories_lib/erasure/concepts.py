"""From a concept's name to what an erasure method is given: prompts, guides and prompts to keep.

Erasure methods work on prompts, the book on concepts ("triangle", "stripes", "church"). A
:class:`ConceptPrompts` says which prompts name a concept, which prompt UCE maps each of them
to (its guide) and which prompts it keeps (those of the other concepts of the same kind).

For the concepts of the shapes world (the labels of its classifier) the prompts are every
caption of its grammar that names the concept: for "triangle", "a triangle", "a red
triangle", "a triangle on a striped background", "a red triangle on a striped background",
... (28 prompts); for "stripes" every caption with a striped background (42). The guide of a
prompt is the same caption with the concept left out ("a red shape on a striped background",
"a red triangle"), so an erased concept gives way to an unspecified one and everything else
the prompt asks for stays. The official UCE and ESD scripts expand a concept into several
prompts in the same spirit (templates such as "image of {concept}" and "painting by
{concept}"); in this world the grammar is small enough to take all of it. Any other concept
(a Stable Diffusion concept such as "church") is its own single prompt with the empty prompt
as guide and nothing kept: the official UCE defaults for objects.

:func:`erase_concept` turns a concept into a cached erased variant, so that every chapter that
needs "the model with ``concept`` erased by ``method``" gets the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..core.models import LDM
from .variants import ErasedVariant, erased_model


@dataclass(frozen=True)
class ConceptPrompts:
    """The prompts an erasure of ``concept`` uses: ``prompts[i]`` is guided to ``guides[i]``."""

    concept: str
    prompts: tuple[str, ...]
    guides: tuple[str, ...]
    preserve: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        """The shortest prompt that names the concept (e.g. "a triangle")."""
        return self.prompts[0]


def _captions(head: str, label: str | None) -> list[str]:
    """Every caption whose ``head`` slot is ``label`` (None: left out), the other slots free."""
    from ..worlds.shapes.data import BACKGROUNDS, COLOURS, SHAPES, prompt

    options = {"shape": [None, *SHAPES], "colour": [None, *COLOURS], "background": [None, *BACKGROUNDS]}
    options[head] = [label]
    return [
        prompt(shape, colour, background)
        for shape in options["shape"]
        for background in options["background"]
        for colour in options["colour"]
    ]


def concept_prompts(concept: str) -> ConceptPrompts:
    """The erase prompts, their guides and the preserved prompts of ``concept`` (see the module's docstring)."""
    from ..worlds.shapes.classifier import HEADS

    if not concept or not concept.strip():
        raise ValueError("a concept to erase must be a non-empty string")
    for head in ("shape", "background"):
        if concept in HEADS[head]:
            prompts, guides = _captions(head, concept), _captions(head, None)
            preserve = [p for other in HEADS[head] if other != concept for p in _captions(head, other)]
            return ConceptPrompts(concept, tuple(prompts), tuple(guides), tuple(preserve))
    return ConceptPrompts(concept, (concept,), ("",))


def erase_concept(
    base: LDM,
    method: str,
    concept: str,
    params: Mapping[str, Any] | None = None,
    *,
    measure_ratio: Callable | None = None,
    progress: bool = True,
) -> ErasedVariant:
    """The cached variant of ``base`` with ``concept`` erased by ``method`` (see :func:`erased_model`).

    UCE erasure and moderation get all the concept's prompts, and UCE its guides and the
    preserved prompts, unless ``params`` sets them ("uce-moderate" guides every prompt to the
    empty prompt); ESD trains on all the concept's prompts; UCE debiasing edits the concept's
    shortest prompt (its attributes are what ``params`` names).
    """
    cp = concept_prompts(concept)
    params = dict(params or {})
    prompts = list(cp.prompts)
    if method in ("uce", "uce-moderate", "uce-debias"):
        params.setdefault("preserve", list(cp.preserve))
    if method == "uce":
        params.setdefault("guides", list(cp.guides))
    if method == "uce-debias":
        prompts = [cp.prompt]
    return erased_model(base, method, prompts, params, measure_ratio=measure_ratio, progress=progress)
