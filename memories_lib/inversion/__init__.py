"""Diffusion inversion: image -> seed z_T -> regenerated image, one result type for every method."""

from .common import InversionResult

__all__ = ["InversionResult"]
