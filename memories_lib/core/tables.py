"""How every results table of the book is written: one set of rules, so that all tables read alike.

- numbers: a fixed number of decimals per column when the caller knows it, else a precision that
  follows the magnitude (``auto_digits``: 1,234 / 123.4 / 12.34 / 0.123), thousands separated;
- intervals: ``value [low, high]`` in one cell (``interval``); signed differences with their sign;
- missing values: an en dash, never ``nan`` or ``None``; booleans: "yes" / "no", never ``True``/``False``;
- width: a number or an interval is never broken over lines (a table too wide for the book's column
  is a table to split by meaning, as chapter 4's are; the reader's checks fail on one).

``format_table`` applies these rules to a DataFrame and returns a Styler (what a notebook displays).
Cells that are already text are left as they are.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

MISSING = "–"
YES, NO = "yes", "no"
# A cell that reads as a number, an interval or a signed difference ("1.23 [1.10, 1.40]", "+0.12", "25%").
NUMBER_LIKE = re.compile(r"^[-+–−]?\d[\d,.]*\s*(%|dB|s|σ)?(\s*\[[^\]]*\])?$")


def is_missing(value: Any) -> bool:
    """None, NaN, NaT, pandas' NA, and infinities: values a reader should see as "–"."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, Real) and not isinstance(value, (bool, np.bool_)):
        return not math.isfinite(float(value))
    return False


def auto_digits(value: float) -> int:
    """Decimals that keep about four significant digits, none above 1,000."""
    size = abs(value)
    if size >= 1000:
        return 0
    if size == 0:
        return 2
    if size >= 100:
        return 1
    if size >= 1:
        return 2
    return min(6, 2 - math.floor(math.log10(size)))


def number(value: Any, digits: int | None = None, suffix: str = "") -> str:
    """A number as the book writes it: ``digits`` decimals (None: ``auto_digits``), thousands separated.

    Booleans become "yes"/"no", missing values "–"; text is returned unchanged.
    """
    if isinstance(value, (bool, np.bool_)):
        return YES if value else NO
    if is_missing(value):
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, Integral) and digits is None:
        return f"{int(value):,}{suffix}"
    value = float(value)
    places = auto_digits(value) if digits is None else digits
    return f"{value:,.{places}f}{suffix}"


def setting_text(value: Any) -> str:
    """A method's setting as text: lists joined, floats in their shortest form (5e-4 -> 0.0005), the rest as is."""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def signed(value: Any, digits: int = 2) -> str:
    """A difference with its sign (``+0.12``, ``-0.30``); zero as ``0.00``; missing as "–"."""
    if is_missing(value):
        return MISSING
    text = f"{float(value):+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def interval(value: Any, low: Any, high: Any, digits: int = 2) -> str:
    """``value [low, high]`` in one cell; "–" when the value is missing."""
    if is_missing(value):
        return MISSING
    return f"{number(value, digits)} [{number(low, digits)}, {number(high, digits)}]"


def percent(value: Any, digits: int = 0) -> str:
    """A fraction in [0, 1] as a percentage (``0.25`` -> ``25%``)."""
    return MISSING if is_missing(value) else number(100 * float(value), digits, "%")


Format = int | str | Callable[[Any], str] | None


def _formatter(spec: Format, missing: str) -> Callable[[Any], str]:
    def write(value: Any) -> str:
        if is_missing(value) and not isinstance(value, str):
            return missing
        if callable(spec):
            return spec(value)
        if isinstance(spec, str) and not isinstance(value, (bool, np.bool_, str)):
            return spec.format(value)  # a format string such as "{:.1f}%"
        return number(value, spec if isinstance(spec, int) else None)
    return write


def format_table(frame: pd.DataFrame, formats: Mapping[str, Format] | Format = None,
                 caption: str | None = None, missing: str = MISSING) -> "pd.io.formats.style.Styler":
    """``frame`` as a Styler written by the book's rules.

    ``formats``: one format for every column, or one per column name (others by the rules): an int
    (decimals), a format string (``"{:.1f}%"``), or a function of the value. Missing values read
    ``missing``; index values are written by the same rules.
    """
    per_column = formats if isinstance(formats, Mapping) else {c: formats for c in frame.columns}
    writers = {c: _formatter(per_column.get(c), missing) for c in frame.columns}
    styler = frame.style.format(writers)
    styler = styler.format_index(number, axis=0).format_index(number, axis=1)
    # a number or an interval is never broken over lines: its cell is as wide as it needs
    unbroken = frame.apply(lambda column: column.map(
        lambda v: "white-space: nowrap" if NUMBER_LIKE.match(writers[column.name](v)) else ""))
    styler = styler.apply(lambda _: unbroken, axis=None)
    if caption:
        styler = styler.set_caption(caption)
    return styler
