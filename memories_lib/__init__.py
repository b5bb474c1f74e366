"""memories_lib: a thin library behind the book that reproduces
"Memories of Forgotten Concepts" (Rusanovsky et al., CVPR 2025)."""

__version__ = "0.1.0"
