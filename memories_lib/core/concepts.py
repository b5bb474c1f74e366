"""What an erasure method is given about a concept: the prompts that name it, their guides, what to keep.

A world knows its concepts ("triangle", "stripes", "church", "Van Gogh"); erasure methods work on
prompts. A :class:`ConceptPrompts` is the hand-over between the two: a world makes it
(``World.concept_prompts``), an erasure method receives it and never looks a concept up itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConceptPrompts:
    """The prompts an erasure of ``concept`` uses: ``prompts[i]`` is guided to ``guides[i]``.

    prompts:  the prompts that name the concept, shortest first (``prompts[0]`` is the concept's
              own prompt, e.g. "a triangle");
    guides:   for each prompt, what it should produce instead (UCE's guide, ESD's anchor);
    preserve: prompts whose outputs must not change (UCE's preserved concepts);
    preserve_scale: the weight the world's rule gives the preserved prompts (UCE's ``preserve_scale``),
              None for the method's own default.
    """

    concept: str
    prompts: tuple[str, ...]
    guides: tuple[str, ...]
    preserve: tuple[str, ...] = ()
    preserve_scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "guides", "preserve"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.concept or not self.concept.strip():
            raise ValueError("a concept must be a non-empty string")
        if not self.prompts:
            raise ValueError(f"concept {self.concept!r}: at least one prompt must name it")
        if self.preserve_scale is not None and not self.preserve_scale > 0:
            raise ValueError(f"concept {self.concept!r}: preserve_scale must be positive, got {self.preserve_scale}")
        if len(self.guides) != len(self.prompts):
            raise ValueError(
                f"concept {self.concept!r}: {len(self.prompts)} prompts but {len(self.guides)} guides (one per prompt)"
            )

    @property
    def prompt(self) -> str:
        """The shortest prompt that names the concept (e.g. "a triangle")."""
        return self.prompts[0]
