"""Concept erasure: a registry of methods, the project's own UCE and ESD, published checkpoints.

``registry``     every method by name, its parameters (a dataclass of official defaults) and what
                 it changes; :func:`erase` runs one on a base model and a concept's prompts;
``cache``        computed erased models are saved once as diffusers folders, keyed by what made them;
``uce``          closed-form editing of cross-attention (erase, moderate, debias);
``esd``          fine-tuning with negative guidance (ESD-x, ESD-u);
``rece``         UCE, then closed-form adversarial embeddings edited away (RECE);
``checkpoints``  published Stable Diffusion 1.4 checkpoints (UNet state dicts, partial edits,
                 replacement text encoders), loaded safely.

Erasure receives a :class:`~memories_lib.core.concepts.ConceptPrompts` from a world and never
imports a world.
"""

from .cache import ErasedModel, erase, erased_path, read_info
from .checkpoints import (
    CheckpointError,
    apply_text_encoder,
    apply_unet_checkpoint,
    load_erased,
    load_text_encoder,
    read_state_dict,
    save_unet_weights,
)
from .esd import ESD_METHODS, ESDConfig, ESDResult, esd_erase, esd_parameter_names
from .rece import RECEParams, RECEResult, adversarial_embedding, rece_erase
from .registry import METHODS, ErasureMethod, get_method, resolve_params
from .uce import (
    UCEResult,
    closed_form_weight,
    cross_attention_projections,
    token_embeddings,
    uce_debias,
    uce_erase,
    uce_moderate,
)

__all__ = [
    "CheckpointError",
    "ESDConfig",
    "ESDResult",
    "ESD_METHODS",
    "ErasedModel",
    "ErasureMethod",
    "METHODS",
    "RECEParams",
    "RECEResult",
    "UCEResult",
    "adversarial_embedding",
    "apply_text_encoder",
    "apply_unet_checkpoint",
    "closed_form_weight",
    "cross_attention_projections",
    "erase",
    "erased_path",
    "esd_erase",
    "esd_parameter_names",
    "get_method",
    "load_erased",
    "load_text_encoder",
    "read_info",
    "read_state_dict",
    "rece_erase",
    "resolve_params",
    "save_unet_weights",
    "token_embeddings",
    "uce_debias",
    "uce_erase",
    "uce_moderate",
]
