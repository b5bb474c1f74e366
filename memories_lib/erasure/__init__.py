"""Concept erasure: a registry of methods, the project's own UCE and ESD, published checkpoints.

``registry``     every method by name, its parameters (a dataclass of official defaults) and what
                 it changes; :func:`erase` runs one on a base model and a concept's prompts;
``cache``        computed erased models are saved once as diffusers folders, keyed by what made them;
``uce``          closed-form editing of cross-attention (erase, moderate, debias);
``esd``          fine-tuning with negative guidance (ESD-x, ESD-u);
``fmn``          Forget-Me-Not: fine-tuning away the attention on the concept's tokens;
``ac``           Ablating Concepts: the concept's prompts fine-tuned to predict their anchors' noise;
``checkpoints``  published Stable Diffusion 1.4 checkpoints (UNet state dicts, partial edits,
                 replacement text encoders), loaded safely.

Erasure receives a :class:`~memories_lib.core.concepts.ConceptPrompts` from a world and never
imports a world.
"""

from .ac import ACParams, ACResult, ac_erase, ac_parameter_names, start_token_detached
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
from .fmn import (
    AttentionRecorder,
    FMNParams,
    FMNResult,
    attention_on_tokens,
    concept_token_mask,
    fmn_erase,
    fmn_parameter_names,
    recording_cross_attention,
)
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
    "ACParams",
    "ACResult",
    "AttentionRecorder",
    "CheckpointError",
    "ESDConfig",
    "ESDResult",
    "ESD_METHODS",
    "ErasedModel",
    "ErasureMethod",
    "FMNParams",
    "FMNResult",
    "METHODS",
    "UCEResult",
    "ac_erase",
    "ac_parameter_names",
    "apply_text_encoder",
    "apply_unet_checkpoint",
    "attention_on_tokens",
    "closed_form_weight",
    "concept_token_mask",
    "cross_attention_projections",
    "erase",
    "erased_path",
    "esd_erase",
    "esd_parameter_names",
    "fmn_erase",
    "fmn_parameter_names",
    "get_method",
    "load_erased",
    "load_text_encoder",
    "read_info",
    "read_state_dict",
    "recording_cross_attention",
    "resolve_params",
    "save_unet_weights",
    "start_token_detached",
    "token_embeddings",
    "uce_debias",
    "uce_erase",
    "uce_moderate",
]
