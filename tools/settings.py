"""Numeric settings read from the environment, each refused by name when it is malformed."""

from __future__ import annotations

import math
import os

from turing.tools.errors import InvalidInputError


def number_setting(
    name: str,
    default: float,
    *,
    minimum: float,
    maximum: float = math.inf,
    integer: bool = False,
) -> float:
    """The value of environment variable `name`, or `default` when it is unset or blank.

    Raises:
        InvalidInputError: The value is not a number (a whole one when `integer`) from
            `minimum` to `maximum`; the message names the variable and the allowed range.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not minimum <= value <= maximum:
        kind = "a whole number" if integer else "a number"
        allowed = (
            f"of at least {minimum:g}"
            if maximum == math.inf
            else (f"from {minimum:g} to {maximum:g}")
        )
        raise InvalidInputError(f"{name}={raw!r}: must be {kind} {allowed}")
    return value
