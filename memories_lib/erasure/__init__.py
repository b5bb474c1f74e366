"""Concept erasure: a registry of methods, the project's own implementations of them, published checkpoints.

``registry``     every method by name, its parameters (a dataclass of official defaults) and what
                 it changes; :func:`erase` runs one on a base model and a concept's prompts;
``cache``        computed erased models are saved once as diffusers folders, keyed by what made them;
``uce``          closed-form editing of cross-attention (erase, moderate, debias);
``esd``          fine-tuning with negative guidance (ESD-x, ESD-u);
``rece``         UCE, then closed-form adversarial embeddings edited away (RECE);
``unlearning``   what the unlearning methods share: forget and retain sets, pseudo prompts, losses;
``salun``        SalUn: fine-tuning of the weights salient to the concept only;
``erasediff``    EraseDiff: first-order constrained unlearning;
``scissorhands`` Scissorhands: the weights most connected to the concept re-initialised, then repaired;
``spm``          a rank-1 membrane on the UNet's transformer blocks, ESD's loss plus latent anchoring;
``advunlearn``   the text encoder trained with ESD's loss on adversarial prefix prompts;
``fmn``          Forget-Me-Not: fine-tuning away the attention on the concept's tokens;
``ac``           Ablating Concepts: the concept's prompts fine-tuned to predict their anchors' noise;
``checkpoints``  published Stable Diffusion 1.4 checkpoints (UNet state dicts, partial edits,
                 replacement text encoders), loaded safely.

Erasure receives a :class:`~memories_lib.core.concepts.ConceptPrompts` from a world and never
imports a world.
"""

from .ac import ACParams, ACResult, ac_erase, ac_parameter_names, start_token_detached
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
from .erasediff import EraseDiffParams, erasediff_erase
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
from .rece import RECEParams, RECEResult, adversarial_embedding, rece_erase
from .registry import METHODS, ErasureMethod, get_method, resolve_params
from .salun import SalUnParams, saliency_mask, salun_erase
from .scissorhands import ScissorhandsParams, scissorhands_erase, trim_mask
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
from .unlearning import UnlearningParams, UnlearningResult

__all__ = [
    "ACParams",
    "ACResult",
    "AdvUnlearnParams",
    "AdvUnlearnResult",
    "AttentionRecorder",
    "CheckpointError",
    "ESDConfig",
    "ESDResult",
    "ESD_METHODS",
    "EraseDiffParams",
    "ErasedModel",
    "ErasureMethod",
    "FMNParams",
    "FMNResult",
    "METHODS",
    "Membrane",
    "RECEParams",
    "RECEResult",
    "SPMParams",
    "SPMResult",
    "SalUnParams",
    "ScissorhandsParams",
    "UCEResult",
    "UnlearningParams",
    "UnlearningResult",
    "ac_erase",
    "ac_parameter_names",
    "adversarial_embedding",
    "advunlearn_erase",
    "advunlearn_parameter_names",
    "apply_text_encoder",
    "apply_unet_checkpoint",
    "attention_on_tokens",
    "closed_form_weight",
    "concept_token_mask",
    "cross_attention_projections",
    "erase",
    "erased_path",
    "erasediff_erase",
    "esd_erase",
    "esd_parameter_names",
    "fmn_erase",
    "fmn_parameter_names",
    "get_method",
    "load_erased",
    "load_text_encoder",
    "read_info",
    "read_state_dict",
    "rece_erase",
    "recording_cross_attention",
    "resolve_params",
    "saliency_mask",
    "salun_erase",
    "save_unet_weights",
    "scissorhands_erase",
    "spm_erase",
    "spm_layer_names",
    "start_token_detached",
    "token_embeddings",
    "trim_mask",
    "uce_debias",
    "uce_erase",
    "uce_moderate",
]
