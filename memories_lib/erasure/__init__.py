"""Concept erasure: the project's own UCE and ESD, cached erased variants, published checkpoints.

``uce``          closed-form editing of cross-attention (erase, moderate, debias);
``esd``          fine-tuning with negative guidance (ESD-x, ESD-u);
``variants``     erased models computed once and cached as diffusers folders;
``concepts``     a concept's erase/guide/preserve prompts, and the cached variant erasing it;
``evaluate``     generations from prompts, judged by a classifier (accuracy after erasure);
``checkpoints``  published Stable Diffusion 1.4 checkpoints (UNet state dicts, partial edits,
                 replacement text encoders), loaded safely.
"""

from .checkpoints import (
    CheckpointError,
    apply_text_encoder,
    apply_unet_checkpoint,
    load_erased,
    load_text_encoder,
    read_state_dict,
    save_unet_weights,
)
from .concepts import ConceptPrompts, concept_prompts, erase_concept
from .esd import ESD_METHODS, ESDConfig, ESDResult, esd_erase, esd_parameter_names
from .uce import (
    UCEResult,
    closed_form_weight,
    cross_attention_projections,
    token_embeddings,
    uce_debias,
    uce_erase,
    uce_moderate,
)
from .variants import METHODS, ErasedVariant, erased_model, read_variant_info, resolve_params, variant_path

__all__ = [
    "CheckpointError",
    "ConceptPrompts",
    "ESDConfig",
    "ESDResult",
    "ESD_METHODS",
    "ErasedVariant",
    "METHODS",
    "UCEResult",
    "apply_text_encoder",
    "apply_unet_checkpoint",
    "closed_form_weight",
    "concept_prompts",
    "cross_attention_projections",
    "erase_concept",
    "erased_model",
    "esd_erase",
    "esd_parameter_names",
    "load_erased",
    "load_text_encoder",
    "read_state_dict",
    "read_variant_info",
    "resolve_params",
    "save_unet_weights",
    "token_embeddings",
    "uce_debias",
    "uce_erase",
    "uce_moderate",
    "variant_path",
]
