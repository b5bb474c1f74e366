"""Concept erasure: a registry of methods, the project's own UCE, ESD, SPM and AdvUnlearn, published checkpoints.

``registry``     every method by name, its parameters (a dataclass of official defaults) and what
                 it changes; :func:`erase` runs one on a base model and a concept's prompts;
``cache``        computed erased models are saved once as diffusers folders, keyed by what made them;
``uce``          closed-form editing of cross-attention (erase, moderate, debias);
``esd``          fine-tuning with negative guidance (ESD-x, ESD-u);
``spm``          a rank-1 membrane on the UNet's transformer blocks, ESD's loss plus latent anchoring;
``advunlearn``   the text encoder trained with ESD's loss on adversarial prefix prompts;
``checkpoints``  published Stable Diffusion 1.4 checkpoints (UNet state dicts, partial edits,
                 replacement text encoders), loaded safely.

Erasure receives a :class:`~memories_lib.core.concepts.ConceptPrompts` from a world and never
imports a world.
"""

from .advunlearn import AdvUnlearnParams, AdvUnlearnResult, advunlearn_erase, advunlearn_parameter_names
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
from .registry import METHODS, ErasureMethod, get_method, resolve_params
from .spm import Membrane, SPMParams, SPMResult, spm_erase, spm_layer_names
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
    "AdvUnlearnParams",
    "AdvUnlearnResult",
    "CheckpointError",
    "ESDConfig",
    "ESDResult",
    "ESD_METHODS",
    "ErasedModel",
    "ErasureMethod",
    "METHODS",
    "Membrane",
    "SPMParams",
    "SPMResult",
    "UCEResult",
    "advunlearn_erase",
    "advunlearn_parameter_names",
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
    "resolve_params",
    "save_unet_weights",
    "spm_erase",
    "spm_layer_names",
    "token_embeddings",
    "uce_debias",
    "uce_erase",
    "uce_moderate",
]
