"""Diffusion inversion: image -> seed z_T -> regenerated image, one result type for every method.

``invert(ldm, images01, prompts, method=...)`` runs any of ``METHODS`` ("ddim", "renoise",
"nti", "edict"); ``regenerate`` and ``generate`` sample with DDIM. The modules hold the
methods themselves as functions of explicit tensors (``ddim_invert``, ``renoise_invert``,
``null_text_invert``, ``edict_invert`` and their samplers).
"""

from .api import METHODS, InversionMethod, Inverted, generate, get_method, invert, regenerate, sample_seeds
from .common import InversionResult
from .ddim import DDIMSchedule, ddim_invert, ddim_sample, ddim_schedule, ddim_step, predict_noise
from .edict import edict_invert, edict_sample
from .nti import NullTextConfig, NullTextResult, null_text_invert, null_text_reconstruct
from .renoise import ReNoiseConfig, renoise_invert

__all__ = [
    "METHODS",
    "DDIMSchedule",
    "InversionMethod",
    "InversionResult",
    "Inverted",
    "NullTextConfig",
    "NullTextResult",
    "ReNoiseConfig",
    "ddim_invert",
    "ddim_sample",
    "ddim_schedule",
    "ddim_step",
    "edict_invert",
    "edict_sample",
    "generate",
    "get_method",
    "invert",
    "null_text_invert",
    "null_text_reconstruct",
    "predict_noise",
    "regenerate",
    "renoise_invert",
    "sample_seeds",
]
