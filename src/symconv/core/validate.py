"""Argument checks shared by every layer family, in both frameworks.

One message style and one exception policy, so a user sees the same words from a torch
layer, its Keras twin and a command-line tool:

- a wrong *type* raises ``TypeError``: ``"{name}={value!r} must be {allowed}, got {type}"``;
- a bad *value* raises ``ValueError``: ``"{name}={value!r} is not allowed; it must be
  {allowed}"``.

Every check returns the value in canonical form (a plain ``int``, a ``tuple`` of ints, a
lower-case string) so callers store what they checked. Booleans are never integers here:
``True`` is not a channel count.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = [
    "allowed_int",
    "check_bool",
    "check_choice",
    "check_divisible",
    "check_int",
    "check_padding",
    "check_real",
    "check_sizes",
    "shown",
    "type_error",
    "value_error",
]


#: Longest value repr a message quotes whole; longer ones are cut in the middle.
_MAX_REPR = 80


def shown(value: object) -> str:
    """``value`` as a message quotes it: an array or tensor as its kind, shape and dtype
    (its repr is its entries), anything else its repr, cut to about 80 characters."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and not isinstance(value, (str, bytes)):
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        return f"<{kind} of shape {tuple(shape)}, {dtype}>"
    text = repr(value)
    if len(text) <= _MAX_REPR:
        return text
    half = (_MAX_REPR - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def type_error(name: str, value: object, allowed: str, got: object | None = None) -> TypeError:
    """The ``TypeError`` for ``name=value``; ``got`` is the offending item (default: value)."""
    offender = value if got is None else got
    return TypeError(f"{name}={shown(value)} must be {allowed}, got {type(offender).__name__}")


def value_error(name: str, value: object, allowed: str) -> ValueError:
    """The ``ValueError`` for ``name=value``, saying what is allowed."""
    return ValueError(f"{name}={shown(value)} is not allowed; it must be {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def allowed_int(minimum: int | None = None, maximum: int | None = None) -> str:
    """The words for an integer range: ``'an int >= 1'``, ``'an int from 8 to 4096'``."""
    if minimum is not None and maximum is not None:
        return f"an int from {minimum} to {maximum}"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (either bound optional)."""
    allowed = allowed_int(minimum, maximum)
    if not _is_int(value):
        raise type_error(name, value, allowed)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise value_error(name, value, allowed)
    return int(value)


def check_sizes(name: str, value: object, ndim: int, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ``ndim`` ints, each ``>= minimum``, as a ``ndim``-tuple."""
    allowed = f"an int >= {minimum} or a tuple of {ndim} such ints"
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) != ndim:
            raise ValueError(f"{name}={value!r} has {len(items)} entries; it must be {allowed}")
    else:
        items = (value,) * ndim
    for item in items:
        if not _is_int(item):
            raise type_error(name, value, allowed, got=item)
        if item < minimum:
            raise value_error(name, value, allowed)
    return tuple(int(v) for v in items)


def check_padding(
    name: str, value: object, ndim: int, modes: Sequence[str] = ("same", "valid")
) -> str | tuple[int, ...]:
    """A padding mode string from ``modes`` or per-axis amounts (ints ``>= 0``)."""
    if isinstance(value, str):
        text = value.lower()
        if text not in modes:
            words = ", ".join(repr(m) for m in modes)
            raise value_error(name, value, f"one of {words}, an int >= 0 or a tuple of {ndim}")
        return text
    return check_sizes(name, value, ndim, minimum=0)


def check_bool(name: str, value: object) -> bool:
    """``value`` itself, once it is a ``bool`` (numpy's included)."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_, without importing numpy
        return bool(value)
    raise type_error(name, value, "a bool")


def check_real(
    name: str,
    value: object,
    minimum: float | None = None,
    *,
    exclusive: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float``, finite unless ``finite=False``, ``>= minimum`` (or ``>``)."""
    words = ["a finite number" if finite else "a number"]
    if minimum is not None:
        words.append(f"{'>' if exclusive else '>='} {minimum:g}")
    allowed = " ".join(words)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(name, value, allowed)
    number = float(value)
    if finite and not math.isfinite(number):
        raise value_error(name, value, allowed)
    if minimum is not None and (number <= minimum if exclusive else number < minimum):
        raise value_error(name, value, allowed)
    return number


def check_choice(name: str, value: object, choices: Sequence[str], *, lower: bool = False) -> str:
    """``value`` once it is one of the strings ``choices`` (case-folded if ``lower``)."""
    allowed = f"one of {tuple(choices)}"
    if not isinstance(value, str):
        raise type_error(name, value, f"a str, {allowed}")
    text = value.lower() if lower else value
    if text not in choices:
        raise value_error(name, value, allowed)
    return text


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise the ``ValueError`` for ``value % by != 0`` (e.g. channels and groups)."""
    if value % by:
        raise ValueError(f"{name}={value} is not divisible by {by_name}={by}")
