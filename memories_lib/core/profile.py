"""Profiles: one YAML file per world (``tiny``, ``mini``, ``sd14``), parsed into a frozen dataclass.

A profile is data. It names the model, the sizes and the step counts of a world, and the
default values of the notebooks' papermill parameters. The library never branches on a
profile's *name*; it reads the profile's fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

PROFILES_DIR = Path(__file__).parent.parent / "profiles"


class ProfileError(ValueError):
    """A profile that cannot be found or does not parse."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a profile's latent diffusion model comes from.

    kind:
      ``tiny``       tiny random-weight models built deterministically from ``seed``;
      ``pretrained`` a diffusers folder or hub id in ``source`` (SD 1.4 and the like);
      ``mini``       the embedded shapes world, trained by this project from ``config``.
    """

    kind: str
    source: str | None = None
    seed: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)

    KINDS = ("tiny", "pretrained", "mini")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ProfileError(f"model.kind must be one of {self.KINDS}, got {self.kind!r}")
        if self.kind == "pretrained" and not self.source:
            raise ProfileError("model.kind 'pretrained' needs model.source (a folder or hub id)")
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


@dataclass(frozen=True)
class Profile:
    """A world: its model, image size, step counts and notebook parameter defaults."""

    name: str
    description: str
    model: ModelSpec
    image_size: int
    num_inference_steps: int
    guidance_scale: float = 1.0
    seed: int = 0
    device: str = "cpu"          # "cpu", "cuda", "cuda:N" or "auto"
    dtype: str = "float32"       # "float32", "float16" or "float64"
    concepts: tuple[str, ...] = ()
    erased_models: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)

    DTYPES = ("float32", "float16", "float64")

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.num_inference_steps <= 0:
            raise ProfileError(f"profile {self.name!r}: image_size and num_inference_steps must be positive")
        if self.dtype not in self.DTYPES:
            raise ProfileError(f"profile {self.name!r}: dtype must be one of {self.DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "concepts", tuple(self.concepts))
        for name in ("erased_models", "data", "parameters"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def resolve_device(self) -> str:
        """The torch device this profile runs on ("auto" picks CUDA when there is one)."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the library."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _check_keys(cls: type, raw: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ProfileError(f"{where}: missing key(s) {missing}")


def parse_profile(raw: Mapping[str, Any], where: str = "profile") -> Profile:
    """Build a :class:`Profile` from a mapping (the parsed YAML); unknown keys are an error."""
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    _check_keys(Profile, raw, where)
    model_raw = raw["model"]
    if not isinstance(model_raw, Mapping):
        raise ProfileError(f"{where}: 'model' must be a mapping")
    _check_keys(ModelSpec, model_raw, f"{where}: model")
    values = dict(raw)
    values["model"] = ModelSpec(**model_raw)
    try:
        return Profile(**values)
    except TypeError as err:  # a wrong type inside the dataclass checks
        raise ProfileError(f"{where}: {err}") from err


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name (``"mini"``) or any profile YAML by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {str(name_or_path)!r}: no file {path}. "
            f"Shipped profiles: {', '.join(list_profiles())}"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"profile file {path} is not valid YAML: {err}") from err
    return parse_profile(raw, where=f"profile {path.name}")
