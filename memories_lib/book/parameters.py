"""Chapter parameters: what a notebook's ``parameters`` cell declares, and the checked values papermill injects."""

from __future__ import annotations

import ast
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import yaml

from ..core.profile import Profile, load_profile
from .toc import Chapter, read_notebook

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ParameterError(ValueError):
    """A notebook parameter that the chapter does not declare, or a value of the wrong type."""


class NotebookParameter(NamedTuple):
    """A parameter declared in a notebook's ``parameters`` cell.

    default: the default value (``ast.literal_eval`` of the source), or the source text
             itself when it is not a literal;
    type:    the type a value must have, or None when anything goes (a None default or a
             default that is not a literal).
    """

    default: Any
    type: type | None


def as_profile(profile: str | Path | Profile) -> Profile:
    """``profile`` itself, or the profile it names (a shipped profile's name or a YAML path)."""
    return profile if isinstance(profile, Profile) else load_profile(profile)


def profile_reference(profile: str | Path | Profile) -> str:
    """What a notebook's ``profile`` parameter receives: a shipped profile's name, or the
    absolute path of a profile file (notebooks run in the book root, not the caller's folder)."""
    if isinstance(profile, Profile):
        return profile.name
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        return str(path.resolve())
    return str(profile)


def _literal_type(text: str) -> NotebookParameter:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NotebookParameter(default=text, type=None)
    return NotebookParameter(default=value, type=None if value is None else type(value))


def notebook_parameters(source_md: str | Path) -> dict[str, NotebookParameter]:
    """The parameters declared by the ``parameters`` cell of a MyST notebook, in order.

    The notebook is converted with jupytext and inspected with ``papermill.inspect_notebook``;
    each default is read as a Python literal to get the type a value must have.
    """
    import jupytext
    import papermill

    source = Path(source_md)
    nb = read_notebook(source)
    if not any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.cells):
        raise ParameterError(f"{source}: no code cell is tagged 'parameters'")
    with tempfile.TemporaryDirectory(prefix="memories-inspect-") as tmp:
        ipynb = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(nb, ipynb)
        inspected = papermill.inspect_notebook(str(ipynb))
    return {name: _literal_type(info["default"]) for name, info in inspected.items()}


def parse_value(text: str) -> Any:
    """A command-line parameter value: parsed as YAML (``8`` -> 8, ``'[star]'`` -> ["star"]).

    Numbers in exponent notation that YAML 1.1 reads as strings (``1e-3``) become floats;
    an empty string stays an empty string.
    """
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParameterError(f"value {text!r} is not valid YAML: {err}") from None
    if isinstance(value, str) and _FLOAT_RE.match(text.strip()):
        return float(text)
    return value


def _describe(expected: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(expected, expected.__name__)


def _coerce(name: str, value: Any, spec: NotebookParameter, where: str) -> Any:
    """``value`` converted to the parameter's type, or a ParameterError."""
    expected = spec.type
    if expected is None:
        return value
    ok: bool
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected in (list, tuple):
        ok = isinstance(value, (list, tuple))
        value = expected(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ParameterError(
            f"parameter {name!r} of {where} must be {_describe(expected)} "
            f"(its default is {spec.default!r}), got {value!r} ({type(value).__name__})"
        )
    return value


def check_parameters(
    chapter: Chapter,
    overrides: Mapping[str, Any],
    declared: Mapping[str, NotebookParameter] | None = None,
) -> dict[str, Any]:
    """``overrides`` checked against the chapter's declared parameters and converted to their types.

    Raises ParameterError, naming the parameter, the notebook and the allowed names, for a
    name the notebook does not declare or a value of the wrong type. ``int`` is accepted where
    a ``float`` is declared, any value where the default is None.
    """
    declared = notebook_parameters(chapter.source) if declared is None else declared
    where = f"notebook {chapter.source.name}"
    checked: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in declared:
            raise ParameterError(
                f"unknown parameter {name!r} for {where}; its parameters are: {', '.join(declared) or 'none'}"
            )
        checked[name] = _coerce(name, value, declared[name], where)
    return checked


def chapter_parameters(
    chapter: Chapter,
    profile: str | Path | Profile,
    overrides: Mapping[str, Any] | None = None,
    declared: Mapping[str, NotebookParameter] | None = None,
) -> dict[str, Any]:
    """What papermill injects: ``profile``, the profile's parameters the notebook declares, then ``overrides``."""
    reference = profile_reference(profile)
    profile = as_profile(profile)
    declared = notebook_parameters(chapter.source) if declared is None else declared
    overrides = dict(overrides or {})
    if "profile" in overrides:
        raise ParameterError("the profile is chosen with --profile, not as a parameter")
    if "profile" not in declared:
        raise ParameterError(f"notebook {chapter.source.name} does not declare the parameter 'profile'")
    from_profile = {name: value for name, value in profile.parameters.items() if name in declared}
    params = {"profile": reference}
    try:
        params.update(check_parameters(chapter, from_profile, declared))
    except ParameterError as err:
        raise ParameterError(f"{err} (the value comes from profile {profile.name!r})") from None
    params.update(check_parameters(chapter, overrides, declared))
    return params
