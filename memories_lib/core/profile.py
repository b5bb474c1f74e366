"""Profiles: one YAML file per world (``tiny``, ``mini``, a Stable Diffusion world), parsed into frozen dataclasses.

A profile is data. It has typed sections:

``model``          how the world's models run: DDIM steps, guidance, device, dtype;
``world``          which world (``kind``) and that world's own settings, which the world
                   reads itself (``memories_lib.worlds``; the only reader of ``kind``);
``erased_models``  the erased models the chapters compare, by name: a method of the erasure
                   registry and its parameters (a published checkpoint is the method
                   ``checkpoint`` with the files' paths);
``book_models``    the names of the erased models that chapters 3 to 8 compare by default (each
                   model costs a chapter its inversions; absent: all of ``erased_models``); the
                   chapter "Every method, three views" compares every one;
``parameters``     default values of the chapters' papermill parameters, each given to every chapter that
                   declares it, and the few the library reads itself (:data:`LIBRARY_PARAMETERS`).

Unknown keys of the sections above are errors that name the file and the key; a key under
``parameters`` belongs to the book's chapters, so the book names one that no chapter declares
(``memories_lib.book.parameters.unused_profile_parameters``). The library never branches on a
profile's *name*; it reads the profile's fields.
"""

from __future__ import annotations

import copyreg
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from . import distributed

PROFILES_DIR = Path(__file__).parent.parent / "profiles"

#: The keys of a profile's ``parameters`` that the library reads itself, with their readers; every other
#: key is a chapter's parameter.
LIBRARY_PARAMETERS: Mapping[str, str] = MappingProxyType({
    "tuning": "the erasure sweeps of memories tune-erasure (experiments.erasure_tuning)",
    "compared_concepts": "the concepts every erased model is compared on (experiments.models)",
})


class ProfileError(ValueError):
    """A profile that cannot be found or does not parse."""


def _frozen(value: Any) -> Any:
    """Read-only copies of nested mappings and lists (a profile is never changed after loading)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


# A profile goes to worker processes (core.parallel) by pickle; its read-only mappings pickle as
# dicts and come back read-only.
def _read_only(mapping: dict) -> Mapping:
    return MappingProxyType(mapping)


copyreg.pickle(MappingProxyType, lambda m: (_read_only, (dict(m),)))


def thaw(value: Any) -> Any:
    """Plain dicts and lists again (for code that wants to change or serialise a section)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelSection:
    """How the world's diffusion model runs (every world has one)."""

    num_inference_steps: int
    guidance_scale: float = 1.0  # classifier-free guidance when generating from prompts
    device: str = "cpu"          # "cpu", "cuda", "cuda:N" or "auto"
    dtype: str = "float32"       # "float32", "float16" or "float64"

    DTYPES = ("float32", "float16", "float64")

    def __post_init__(self) -> None:
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps <= 0:
            raise ProfileError(f"model.num_inference_steps must be a positive integer, got {self.num_inference_steps!r}")
        if self.dtype not in self.DTYPES:
            raise ProfileError(f"model.dtype must be one of {self.DTYPES}, got {self.dtype!r}")
        if not isinstance(self.guidance_scale, (int, float)) or self.guidance_scale < 0:
            raise ProfileError(f"model.guidance_scale must be a number >= 0, got {self.guidance_scale!r}")

    def resolve_device(self) -> str:
        """The torch device: "auto" picks CUDA when there is one; under a launcher (``accelerate launch``)
        "auto" and "cuda" mean the GPU of the process's local rank (``core.distributed.local_gpu``)."""
        if self.device == "auto":
            return distributed.auto_device()
        if self.device == "cuda":
            return distributed.local_gpu()
        return self.device

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class WorldSection:
    """Which world, and its own settings (``options``: read and checked by that world's class)."""

    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ProfileError(f"world.kind must be a non-empty string, got {self.kind!r}")
        object.__setattr__(self, "options", _frozen(dict(self.options)))


@dataclass(frozen=True)
class ErasedModelSpec:
    """One erased model of the profile: ``method`` of the erasure registry with ``params``.

    In YAML either ``NAME: {param: value, ...}`` (the method is NAME) or
    ``NAME: {method: METHOD, params: {...}}`` (several entries of one method, or a published
    checkpoint: ``method: checkpoint``).
    """

    name: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen(dict(self.params)))


@dataclass(frozen=True)
class Profile:
    """A world: its model settings, the world, its concepts, erased models and chapter defaults."""

    name: str
    description: str
    model: ModelSection
    world: WorldSection
    interpret: bool = True  # False: numbers only show that the code runs (random weights)
    seed: int = 0
    concepts: tuple[str, ...] = ()
    erased_models: Mapping[str, ErasedModelSpec] = field(default_factory=dict)
    book_models: tuple[str, ...] | None = None  # None: every erased model
    parameters: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it was read from (for error messages)

    def __post_init__(self) -> None:
        if not isinstance(self.interpret, bool):
            raise ProfileError(f"profile {self.name!r}: interpret must be true or false, got {self.interpret!r}")
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "erased_models", MappingProxyType(dict(self.erased_models)))
        object.__setattr__(self, "parameters", _frozen(dict(self.parameters)))
        if self.book_models is not None:
            if isinstance(self.book_models, (str, bytes)) or not isinstance(self.book_models, (list, tuple)):
                raise ProfileError(f"profile {self.name!r}: book_models must be a list of erased model names, "
                                   f"got {self.book_models!r}")
            unknown = [m for m in self.book_models if m not in self.erased_models]
            if unknown:
                raise ProfileError(f"profile {self.name!r}: book_models names {unknown}, which erased_models does "
                                   f"not define; it defines {list(self.erased_models)}")
            object.__setattr__(self, "book_models", tuple(str(m) for m in self.book_models))

    # Shortcuts for the settings every chapter reads.
    @property
    def num_inference_steps(self) -> int:
        return self.model.num_inference_steps

    @property
    def guidance_scale(self) -> float:
        return float(self.model.guidance_scale)

    def resolve_device(self) -> str:
        return self.model.resolve_device()

    def torch_dtype(self):
        return self.model.torch_dtype()


def list_profiles() -> list[str]:
    """Names of the profiles shipped with the library."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def check_keys(cls: type, raw: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> None:
    """Unknown keys of ``raw`` (not fields of the dataclass ``cls``) and missing required ones raise ProfileError."""
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)} - set(skip)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw
        and f.name not in skip
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ProfileError(f"{where}: missing key(s) {missing}")


def _erased_models(raw: Any, where: str) -> dict[str, ErasedModelSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: erased_models must be a mapping of name -> settings")
    out = {}
    for name, value in raw.items():
        value = {} if value is None else value
        if not isinstance(value, Mapping):
            raise ProfileError(f"{where}: erased_models.{name} must be a mapping, got {value!r}")
        if "method" in value:
            extra = sorted(set(value) - {"method", "params"})
            if extra:
                raise ProfileError(
                    f"{where}: erased_models.{name}: with 'method', the settings go under 'params' "
                    f"(unknown key(s) {extra})"
                )
            out[name] = ErasedModelSpec(str(name), str(value["method"]), value.get("params") or {})
        else:
            out[name] = ErasedModelSpec(str(name), str(name), value)
    return out


def parse_profile(raw: Mapping[str, Any], where: str = "profile") -> Profile:
    """Build a :class:`Profile` from a mapping (the parsed YAML); unknown keys are an error."""
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    check_keys(Profile, raw, where, skip=("source",))
    check_keys(ModelSection, raw["model"], f"{where}: model")
    world = raw["world"]
    if not isinstance(world, Mapping) or "kind" not in world:
        raise ProfileError(f"{where}: world must be a mapping with a 'kind'")
    values = dict(raw)
    try:
        values["model"] = ModelSection(**raw["model"])
        values["world"] = WorldSection(world["kind"], {k: v for k, v in world.items() if k != "kind"})
        values["erased_models"] = _erased_models(raw.get("erased_models"), where)
        return Profile(**values, source=where)
    except ProfileError as err:
        if str(err).startswith(where):
            raise
        raise ProfileError(f"{where}: {err}") from err
    except TypeError as err:  # a wrong type inside the dataclass checks
        raise ProfileError(f"{where}: {err}") from err


def profile_path(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped profile's name (``"mini"``) or of a path; ProfileError when there is none."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {str(name_or_path)!r}: no file {path}. "
            f"Shipped profiles: {', '.join(list_profiles())}"
        )
    return path


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_variables(raw: Any, where: str, environ: Mapping[str, str] | None = None, at: str = "") -> Any:
    """``raw`` with every ``${NAME}`` in its strings replaced by the environment variable NAME.

    A profile whose files live in one folder names it once (the shipped ``sd14``: ``${MEMORIES_SD14}``);
    a variable that is not set is a ProfileError naming it and the key that uses it.
    """
    environ = os.environ if environ is None else environ
    if isinstance(raw, Mapping):
        return {k: expand_variables(v, where, environ, f"{at}.{k}" if at else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_variables(v, where, environ, f"{at}[{i}]") for i, v in enumerate(raw)]
    if isinstance(raw, str) and "${" in raw:
        unset = [name for name in _VARIABLE.findall(raw) if not environ.get(name)]
        if unset:
            raise ProfileError(f"{where}: {at} uses the environment variable {unset[0]}, which is not set; "
                               f"set it (export {unset[0]}=/path/to/the/folder) as the profile's comments say")
        return _VARIABLE.sub(lambda m: environ[m.group(1)], raw)
    return raw


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name (``"mini"``) or any profile YAML by path (``${NAME}``: :func:`expand_variables`)."""
    path = profile_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"profile file {path} is not valid YAML: {err}") from err
    where = f"profile {path.name}" if path.parent == PROFILES_DIR else f"profile {path}"
    return parse_profile(expand_variables(raw, where), where=where)
