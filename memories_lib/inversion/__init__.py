"""Diffusion inversion: image -> seed z_T -> regenerated image, one result type for every method.

``invert(ldm, images01, prompts, method=...)`` runs any of ``METHODS``: "ddim", "renoise"
(as the official Memories run: noise regularisation on, z_0 a seeded posterior sample),
"renoise-plain" (no regularisation, posterior mean), "nti" (prompt-to-prompt's null-text
inversion), "nti-memories" (the official Memories null-text run) and "edict".
``resolve(method, num_steps, **options)`` gives a run's fully resolved configuration (what
results stores key on); ``invert_latents`` inverts given latents z_0 instead of images;
``InversionResult.diverged`` flags seeds that blew up. ``decoder_invert`` (module ``decoder``)
inverts the VAE's decoder: the latent whose decoding reproduces an image, the first stage of the
Sequential Inversion Block. The modules
hold the methods themselves as functions of explicit tensors (``ddim_invert``,
``renoise_invert``, ``null_text_invert``, ``memories_ddim_invert``, ``edict_invert`` and
their samplers). Plain DDIM sampling, which every method's reconstruction shares, is
``memories_lib.core.sampling``.
"""

from .api import METHODS, InversionMethod, Inverted, get_method, invert, invert_latents, resolve
from .decoder import DecoderInversion, decoder_invert
from .common import DIVERGED_MEAN_SQUARE, InversionResult, diverged_seeds
from .ddim import ddim_invert
from .edict import edict_invert, edict_sample
from .nti import NullTextConfig, NullTextResult, memories_ddim_invert, null_text_invert, null_text_reconstruct
from .renoise import ReNoiseConfig, regularize_noise, renoise_invert

__all__ = [
    "DIVERGED_MEAN_SQUARE",
    "DecoderInversion",
    "METHODS",
    "InversionMethod",
    "InversionResult",
    "Inverted",
    "NullTextConfig",
    "NullTextResult",
    "ReNoiseConfig",
    "ddim_invert",
    "decoder_invert",
    "diverged_seeds",
    "edict_invert",
    "edict_sample",
    "get_method",
    "invert",
    "invert_latents",
    "memories_ddim_invert",
    "null_text_invert",
    "null_text_reconstruct",
    "regularize_noise",
    "renoise_invert",
    "resolve",
]
