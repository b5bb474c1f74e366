"""Chapter parameters: what a notebook's ``parameters`` cell declares, and the checked values papermill injects.

The ``parameters`` cell is read with ``ast``: each top-level ``NAME = VALUE`` or
``NAME: TYPE = VALUE`` declares a parameter. Its type comes from the annotation (``bool``,
``int``, ``float``, ``str``, ``list``, ``tuple`` or ``dict``, optionally ``| None``), else
from a literal default; an unannotated ``None`` or non-literal default accepts anything.
(papermill's own inspection does not see ``NAME: int | None = ...``: its pattern knows no ``|``.)
"""

from __future__ import annotations

import ast
import numbers
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import yaml

from ..core import distributed
from ..core.profile import LIBRARY_PARAMETERS, Profile, list_profiles, load_profile
from .toc import Chapter, read_notebook

# The annotations a parameter may have (subscripted ones, ``list[str]``, too: the items are not checked).
_TYPES: dict[str, type] = {t.__name__: t for t in (bool, int, float, str, list, tuple, dict)}

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ParameterError(ValueError):
    """A notebook parameter that the chapter does not declare, or a value of the wrong type."""


class NotebookParameter(NamedTuple):
    """A parameter declared in a notebook's ``parameters`` cell.

    default:  the default value (``ast.literal_eval`` of the source), or the source text
              itself when it is not a literal;
    type:     the type a value must have (from the annotation, else the literal default), or
              None when anything goes (no annotation and a None or non-literal default);
    optional: None is accepted too (an annotation ``TYPE | None``).
    """

    default: Any
    type: type | None
    optional: bool = False


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


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _annotated_type(name: str, annotation: ast.expr, where: str) -> tuple[type, bool]:
    """The type an annotation ``TYPE`` or ``TYPE | None`` asks for, and whether None is accepted."""
    base, optional = annotation, False
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        if _is_none(annotation.right):
            base, optional = annotation.left, True
        elif _is_none(annotation.left):
            base, optional = annotation.right, True
    if isinstance(base, ast.Subscript):
        base = base.value
    if isinstance(base, ast.Name) and base.id in _TYPES:
        return _TYPES[base.id], optional
    raise ParameterError(
        f"parameter {name!r} of {where} has the annotation {ast.unparse(annotation)!r}; "
        f"a parameter's annotation is one of {', '.join(_TYPES)}, optionally '| None'"
    )


def _declared(name: str, value: ast.expr, annotation: ast.expr | None, cell: str, where: str) -> NotebookParameter:
    """One parameter from the nodes of its assignment."""
    try:
        default = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        default, inferred = ast.get_source_segment(cell, value), None
    else:
        inferred = None if default is None else type(default)
    if annotation is None:
        return NotebookParameter(default, inferred)
    return NotebookParameter(default, *_annotated_type(name, annotation, where))


def notebook_parameters(source_md: str | Path) -> dict[str, NotebookParameter]:
    """The parameters declared by the ``parameters`` cell of a MyST notebook, in order."""
    source = Path(source_md)
    where = f"notebook {source.name}"
    nb = read_notebook(source)
    cell = next(
        (c.source for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])),
        None,
    )
    if cell is None:
        raise ParameterError(f"{source}: no code cell is tagged 'parameters'")
    try:
        tree = ast.parse(cell)
    except SyntaxError as err:
        raise ParameterError(f"the parameters cell of {where} is not valid Python: {err}") from None
    declared: dict[str, NotebookParameter] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            declared[node.targets[0].id] = _declared(node.targets[0].id, node.value, None, cell, where)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            declared[node.target.id] = _declared(node.target.id, node.value, node.annotation, cell, where)
    return declared


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
    if expected is None or (value is None and spec.optional):
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
        wanted = _describe(expected) + (" or None" if spec.optional else "")
        raise ParameterError(
            f"parameter {name!r} of {where} must be {wanted} "
            f"(its default is {spec.default!r}), got {value!r} ({type(value).__name__})"
        )
    return value


def whole_number(name: str, value: Any, least: int) -> int:
    """A chapter's parameter ``value`` as an int if it is a whole number >= ``least``, else ParameterError.

    For the checks a chapter makes after resolving its defaults (``None``: the profile's value), before
    any work: ``whole_number("num_queries", 0, 1)`` names the parameter and the value refused.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ParameterError(f"parameter {name} must be a whole number >= {least}, got {value!r}")
    return int(value)


def check_parameters(
    chapter: Chapter,
    overrides: Mapping[str, Any],
    declared: Mapping[str, NotebookParameter] | None = None,
) -> dict[str, Any]:
    """``overrides`` checked against the chapter's declared parameters and converted to their types.

    Raises ParameterError, naming the parameter, the notebook and the allowed names, for a
    name the notebook does not declare or a value of the wrong type. ``int`` is accepted where
    a ``float`` is declared, None where the annotation allows it, any value where the
    parameter has no type.
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


def unused_profile_parameters(profile: str | Path | Profile, declared: Iterable[str]) -> str | None:
    """A message naming the keys of the profile's ``parameters`` that no name of ``declared`` (the book's chapters'
    parameters) takes and the library does not read (:data:`~memories_lib.core.profile.LIBRARY_PARAMETERS`),
    such as a misspelt ``decoder_step``; None when every key is used.

    A message rather than an error: a profile may serve several books (the tests' small books run the
    shipped profiles), and a key only another book's chapters declare is not a mistake.
    """
    profile = as_profile(profile)
    declared = set(declared)
    unused = sorted(set(profile.parameters) - declared - set(LIBRARY_PARAMETERS))
    if not unused:
        return None
    return (f"profile {profile.name!r} ({profile.source or 'no file'}): parameter(s) {unused} are declared by no "
            f"chapter of this book and not read by the library, so they change nothing; the chapters' parameters "
            f"are: {', '.join(sorted(declared)) or 'none'}")


def warn_unused_profile_parameters(profile: str | Path | Profile, declared: Iterable[str]) -> None:
    """Print :func:`unused_profile_parameters`'s message, if any, to stderr, once per job (by its main process).

    The shipped profiles as shipped are left out: the test suite checks them against the book's chapters
    (``tests/test_book.py``), and its small books of test chapters run them, which would only be noise.
    """
    profile = as_profile(profile)
    if profile.name in list_profiles() and profile == load_profile(profile.name):
        return
    message = unused_profile_parameters(profile, declared)
    if message and distributed.launch().is_main:
        print(f"[memories] warning: {message}", file=sys.stderr)


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
