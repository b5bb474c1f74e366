"""Diffusion inversion: image -> seed z_T -> regenerated image, one result type for every method.

``invert(ldm, images01, prompts, method=...)`` runs any of ``METHODS`` ("ddim", "renoise",
"nti", "edict"). The modules hold the methods themselves as functions of explicit tensors
(``ddim_invert``, ``renoise_invert``, ``null_text_invert``, ``edict_invert`` and their
samplers). Plain DDIM sampling, which every method's reconstruction shares, is
``memories_lib.core.sampling``.
"""

from .api import METHODS, InversionMethod, Inverted, get_method, invert
from .common import InversionResult
from .ddim import ddim_invert
from .edict import edict_invert, edict_sample
from .nti import NullTextConfig, NullTextResult, null_text_invert, null_text_reconstruct
from .renoise import ReNoiseConfig, renoise_invert

__all__ = [
    "METHODS",
    "InversionMethod",
    "InversionResult",
    "Inverted",
    "NullTextConfig",
    "NullTextResult",
    "ReNoiseConfig",
    "ddim_invert",
    "edict_invert",
    "edict_sample",
    "get_method",
    "invert",
    "null_text_invert",
    "null_text_reconstruct",
    "renoise_invert",
]
