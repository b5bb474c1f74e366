"""Attacks on erased models: inputs that make an erased model show its concept again.

``prompt``  UnlearnDiffAtk (Zhang et al., ECCV 2024): a few real tokens put before a prompt that
            names the concept, optimised so that the erased model denoises an image of the concept
            well under the new prompt (its own "diffusion classifier" loss, no external model);
            :func:`prompt_attack` runs it on (prompt, target latent) pairs, :func:`attack_objective`
            scores given prompts by that loss, :func:`attack_images` generates from the adversarial
            prompts for a detector to judge.

An attack is a sibling of erasure and inversion: it takes a model (erased or not), prompts and
latents, and returns prompts and images. Whether an attack succeeded is a detector's judgement,
which belongs to a world, so the judge is a function the caller passes in; attacks import only
``memories_lib.core``.
"""

from .prompt import (
    Judge,
    PromptAttack,
    PromptAttackConfig,
    attack_images,
    attack_objective,
    attack_timesteps,
    candidate_tokens,
    official_prefix_tokens,
    project_to_simplex,
    prompt_attack,
)

__all__ = [
    "Judge",
    "PromptAttack",
    "PromptAttackConfig",
    "attack_images",
    "attack_objective",
    "attack_timesteps",
    "candidate_tokens",
    "official_prefix_tokens",
    "project_to_simplex",
    "prompt_attack",
]
