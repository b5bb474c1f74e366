"""From a concept's name to what an erasure method is given: the prompt, a guide and prompts to keep.

Erasure methods work on prompts, the book on concepts ("triangle", "stripes", "church"). A
:class:`ConceptPrompts` says which prompt names a concept, which prompt UCE maps it to (the
guide) and which prompts it keeps (the other concepts of the same kind). For the concepts of
the shapes world (the labels of its classifier) these follow its caption grammar:

* a shape ``s``: erase ``"a s"``, guide ``"a shape"``, keep ``"a t"`` for every other shape;
* a background style ``b``: erase ``"a shape on a <b> background"``, guide ``"a shape"``, keep
  the prompts of the other styles.

Any other concept (a Stable Diffusion concept such as "church") is its own prompt, with the
empty prompt as guide and nothing kept: the official UCE script's defaults for objects.
:func:`erase_concept` turns a concept into a cached erased variant, so that every chapter
that needs "the model with ``concept`` erased by ``method``" gets the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..models import LDM
from .variants import ErasedVariant, erased_model


@dataclass(frozen=True)
class ConceptPrompts:
    """The prompts an erasure of ``concept`` uses."""

    concept: str
    prompt: str
    guide: str = ""
    preserve: tuple[str, ...] = ()


def concept_prompts(concept: str) -> ConceptPrompts:
    """The erase, guide and preserve prompts of ``concept`` (see the module's docstring)."""
    from ..mini.classifier import HEADS
    from ..mini.data import prompt

    if not concept or not concept.strip():
        raise ValueError("a concept to erase must be a non-empty string")
    if concept in HEADS["shape"]:
        others = [s for s in HEADS["shape"] if s != concept]
        return ConceptPrompts(concept, prompt(concept), prompt(), tuple(prompt(s) for s in others))
    if concept in HEADS["background"]:
        others = [b for b in HEADS["background"] if b != concept]
        return ConceptPrompts(
            concept, prompt(None, None, concept), prompt(), tuple(prompt(None, None, b) for b in others)
        )
    return ConceptPrompts(concept, concept)


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

    UCE methods get the concept's guide and preserved prompts unless ``params`` sets them
    ("uce-moderate" always guides to the empty prompt); ESD gets the concept's prompt.
    """
    prompts = concept_prompts(concept)
    params = dict(params or {})
    if method in ("uce", "uce-moderate", "uce-debias"):
        params.setdefault("preserve", list(prompts.preserve))
    if method == "uce":
        params.setdefault("guides", prompts.guide)
    return erased_model(base, method, [prompts.prompt], params, measure_ratio=measure_ratio, progress=progress)
