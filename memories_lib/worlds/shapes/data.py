"""The shapes world's data: procedurally drawn images of coloured shapes on patterned backgrounds.

Every image is fully described by a :class:`ShapeSpec` (shape, colour, background style and
the jitter of size, position, rotation and pattern), which :func:`sample_specs` draws from a
seed and :func:`render` turns into pixels. Shapes play the role of the paper's objects
(church, parachute, ...), background patterns the role of styles (Van Gogh). Shapes are
drawn at ``SUPERSAMPLE`` times the target size and downscaled, so edges are anti-aliased.

Backgrounds are dark and grey, the shapes saturated, so that a shape and its colour stay
visible on every background. Nothing is read from disk; the same seed gives the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ...core.progress import tqdm

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: tuple[str, ...] = ("plain", "stripes", "dots")

#: RGB of each shape colour (0-255), chosen far apart and far from the grey backgrounds.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (45, 95, 245),
    "yellow": (240, 225, 40),
    "purple": (165, 55, 215),
    "orange": (250, 140, 20),
}

#: The word a caption uses for each background style ("a ... on a striped background").
BACKGROUND_WORDS: dict[str, str] = {"plain": "plain", "stripes": "striped", "dots": "dotted"}

#: Shapes are drawn at this multiple of the output size, then downscaled (anti-aliasing).
SUPERSAMPLE = 4

# Jitter ranges, as fractions of the image side.
_RADIUS_RANGE = (0.25, 0.36)       # shape "radius" (centre to farthest point)
_BG_LEVEL_RANGE = (0.06, 0.22)     # the dark grey of the background
_PATTERN_CONTRAST_RANGE = (0.16, 0.26)  # how much lighter stripes and dots are
_STRIPE_PERIOD_RANGE = (0.28, 0.38)
_DOT_SPACING_RANGE = (0.26, 0.34)
_ROTATION_JITTER = 25.0            # degrees either way from the shape's upright pose
_PATTERN_ANGLES = (0.0, 45.0, 90.0, 135.0)  # stripe directions (dot grids use 0 and 45)


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one image of the shapes world.

    Positions and lengths are fractions of the image side, angles in degrees; ``bg_level``
    and ``pattern_contrast`` are grey levels in [0, 1]. ``pattern_angle`` and
    ``pattern_phase`` orient and shift the stripes or the dot grid (unused when plain).
    """

    shape: str
    colour: str
    background: str
    cx: float = 0.5
    cy: float = 0.5
    radius: float = 0.3
    angle: float = 0.0
    bg_level: float = 0.12
    pattern_contrast: float = 0.2
    pattern_period: float = 0.2
    pattern_angle: float = 0.0
    pattern_phase: float = 0.0

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"),
            (self.colour, COLOURS, "colour"),
            (self.background, BACKGROUNDS, "background"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; the shapes world knows {allowed}")

    @property
    def caption(self) -> str:
        return caption(self)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt(shape: str | None = None, colour: str | None = None, background: str | None = None) -> str:
    """A caption naming any subset of shape, colour and background style.

    ``prompt("triangle", "red", "stripes")`` -> ``"a red triangle on a striped background"``;
    a missing shape reads "shape", a missing colour or background is left out
    (``prompt("star")`` -> ``"a star"``).
    """
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; the shapes world knows {SHAPES}")
    if colour is not None and colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; the shapes world knows {COLOURS}")
    if background is not None and background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; the shapes world knows {BACKGROUNDS}")
    noun = " ".join(w for w in (colour, shape or "shape") if w)
    text = f"{_article(noun)} {noun}"
    if background is not None:
        text += f" on a {BACKGROUND_WORDS[background]} background"
    return text


def caption(spec: ShapeSpec) -> str:
    """The full caption of an image, e.g. ``"a red triangle on a striped background"``."""
    return prompt(spec.shape, spec.colour, spec.background)


def vocabulary() -> tuple[str, ...]:
    """Every word a caption or :func:`prompt` can use, sorted (for the word tokenizer)."""
    words = {"a", "an", "on", "background", "shape"}
    words.update(SHAPES, COLOURS, BACKGROUND_WORDS.values())
    return tuple(sorted(words))


def labels(specs: Sequence[ShapeSpec]) -> dict[str, torch.Tensor]:
    """Integer labels of ``specs``: ``{"shape": (n,), "colour": (n,), "background": (n,)}``."""
    return {
        "shape": torch.tensor([SHAPES.index(s.shape) for s in specs], dtype=torch.long),
        "colour": torch.tensor([COLOURS.index(s.colour) for s in specs], dtype=torch.long),
        "background": torch.tensor([BACKGROUNDS.index(s.background) for s in specs], dtype=torch.long),
    }


# --------------------------------------------------------------------------- sampling


def _as_rng(generator: int | np.random.Generator) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise ValueError(f"expected an int seed or a numpy Generator, got {type(generator).__name__}")


def _choices(given: Iterable[str] | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if given is None:
        return allowed
    given = tuple(given)
    bad = [g for g in given if g not in allowed]
    if bad or not given:
        raise ValueError(f"{what} must be a non-empty subset of {allowed}, got {given}")
    return given


def sample_specs(
    n: int,
    generator: int | np.random.Generator = 0,
    shapes: Iterable[str] | None = None,
    colours: Iterable[str] | None = None,
    backgrounds: Iterable[str] | None = None,
) -> list[ShapeSpec]:
    """Draw ``n`` random specs (uniform over the allowed shapes, colours and backgrounds).

    ``generator`` is an int seed or a ``numpy.random.Generator`` (advanced in place).
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = _as_rng(generator)
    shapes = _choices(shapes, SHAPES, "shapes")
    colours = _choices(colours, COLOURS, "colours")
    backgrounds = _choices(backgrounds, BACKGROUNDS, "backgrounds")
    specs = []
    for _ in range(n):
        shape = shapes[rng.integers(len(shapes))]
        colour = colours[rng.integers(len(colours))]
        background = backgrounds[rng.integers(len(backgrounds))]
        radius = float(rng.uniform(*_RADIUS_RANGE))
        margin = radius + 0.04
        cx, cy = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
        angle = float(rng.uniform(-_ROTATION_JITTER, _ROTATION_JITTER))
        period_range = _STRIPE_PERIOD_RANGE if background == "stripes" else _DOT_SPACING_RANGE
        pattern_angle = float(_PATTERN_ANGLES[rng.integers(len(_PATTERN_ANGLES))])
        if background == "dots":
            pattern_angle %= 90.0  # a square dot grid looks the same turned by 90 degrees
        specs.append(
            ShapeSpec(
                shape=shape,
                colour=colour,
                background=background,
                cx=cx,
                cy=cy,
                radius=radius,
                angle=angle,
                bg_level=float(rng.uniform(*_BG_LEVEL_RANGE)),
                pattern_contrast=float(rng.uniform(*_PATTERN_CONTRAST_RANGE)),
                pattern_period=float(rng.uniform(*period_range)),
                pattern_angle=pattern_angle,
                pattern_phase=float(rng.uniform(0, 1)),
            )
        )
    return specs


# --------------------------------------------------------------------------- rendering


def _outline(spec: ShapeSpec, side: int) -> list[tuple[float, float]]:
    """Polygon vertices (pixels of a ``side`` x ``side`` canvas) of a non-circular shape."""
    r = spec.radius * side
    cx, cy = spec.cx * side, spec.cy * side
    if spec.shape == "square":
        r *= 1.12  # squares and triangles a little larger, so every shape covers a similar area
        pts = [(r * math.cos(math.radians(45 + 90 * k)), r * math.sin(math.radians(45 + 90 * k))) for k in range(4)]
    elif spec.shape == "triangle":
        r *= 1.1
        pts = [(r * math.cos(math.radians(-90 + 120 * k)), r * math.sin(math.radians(-90 + 120 * k))) for k in range(3)]
    elif spec.shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.42 * r
            a = math.radians(-90 + 36 * k)
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif spec.shape == "cross":
        w = 0.36 * r  # half the arm width
        e = r / math.sqrt(1 + (w / r) ** 2)  # arm end so that the corner lies at distance r
        pts = [(w, -e), (w, -w), (e, -w), (e, w), (w, w), (w, e),
               (-w, e), (-w, w), (-e, w), (-e, -w), (-w, -w), (-w, -e)]
    else:
        raise ValueError(f"no outline for shape {spec.shape!r}")
    theta = math.radians(spec.angle)
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in pts]


def _background(spec: ShapeSpec, side: int) -> np.ndarray:
    """The grey background (side, side) in [0, 1] at the supersampled resolution."""
    base = np.full((side, side), spec.bg_level, dtype=np.float32)
    if spec.background == "plain":
        return base
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side
    y, x = np.meshgrid(coords, coords, indexing="ij")
    theta = math.radians(spec.pattern_angle)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    period = spec.pattern_period
    if spec.background == "stripes":
        on = ((u / period + spec.pattern_phase) % 1.0) < 0.5
    else:  # dots on a rotated square grid, dot radius 0.28 of the spacing
        du = ((u / period + spec.pattern_phase) % 1.0) - 0.5
        dv = ((v / period + spec.pattern_phase) % 1.0) - 0.5
        on = (du**2 + dv**2) < 0.28**2
    return base + spec.pattern_contrast * on.astype(np.float32)


def render(spec: ShapeSpec, size: int = 32) -> torch.Tensor:
    """The image of ``spec``: a float32 tensor (3, size, size) in [0, 1]."""
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    side = size * SUPERSAMPLE
    bg = _background(spec, side)
    mask_img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask_img)
    if spec.shape == "circle":
        r = spec.radius * side * 0.92  # a circle fills its radius fully; match the others' area roughly
        cx, cy = spec.cx * side, spec.cy * side
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_outline(spec, side), fill=255)
    mask = np.asarray(mask_img, dtype=np.float32)[..., None] / 255.0
    colour = np.asarray(COLOUR_RGB[spec.colour], dtype=np.float32) / 255.0
    big = bg[..., None] * (1 - mask) + colour * mask
    pil = Image.fromarray(np.clip(big * 255 + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    small = np.asarray(pil.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return torch.from_numpy(small.copy()).permute(2, 0, 1).contiguous()


def render_many(specs: Sequence[ShapeSpec], size: int = 32, progress: bool = False) -> torch.Tensor:
    """Images of ``specs`` stacked into (n, 3, size, size)."""
    if len(specs) == 0:
        return torch.zeros(0, 3, size, size)
    return torch.stack([render(s, size) for s in tqdm(specs, desc="drawing shapes", leave=False, disable=not progress)])


def make_dataset(
    n: int,
    size: int = 32,
    seed: int | np.random.Generator = 0,
    shapes: Iterable[str] | None = None,
    colours: Iterable[str] | None = None,
    backgrounds: Iterable[str] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[ShapeSpec]]:
    """``n`` images (n, 3, size, size) in [0, 1] and their specs, deterministic given ``seed``."""
    specs = sample_specs(n, seed, shapes=shapes, colours=colours, backgrounds=backgrounds)
    return render_many(specs, size, progress=progress), specs
