"""The calculator's bounds, its error type and the integer-size helpers every step uses."""

from __future__ import annotations

import math
from typing import Final, TypeAlias

Number: TypeAlias = int | float

MAX_EXPRESSION_LENGTH: Final = 1_000
"""Longest accepted input, in characters, before any stripping."""
MAX_PAREN_DEPTH: Final = 50
"""Deepest accepted nesting of parentheses (checked before parsing)."""
MAX_NODES: Final = 500
"""Most expression nodes (numbers, names, operators, calls) in one input."""
MAX_DEPTH: Final = 200
"""Deepest accepted expression tree."""
MAX_INT_BITS: Final = 100_000
"""Largest integer, in bits (about 30,000 digits), of any intermediate value."""
MAX_RESULT_DIGITS: Final = 4_000
"""Most digits in a final integer result (CPython's own str(int) limit is 4,300)."""
MAX_FACTORIAL: Final = 1_000
"""Largest accepted factorial() argument."""
MAX_ROUND_DIGITS: Final = 1_000
"""Largest accepted absolute value of round()'s second argument."""
WORK_BUDGET: Final = 10_000_000
"""Work allowed per call, in estimated 30-bit-digit operations (roughly 1-2 ns each)."""

_LIMB_BITS: Final = 30  # CPython stores ints in 30-bit digits
_LOG10_2: Final = math.log10(2)
_MAX_RESULT_BITS: Final = int(MAX_RESULT_DIGITS / _LOG10_2)  # 2**this has 4,000 digits
_COMBINATORIAL_COST: Final = 25  # comb/perm are slower per result digit than a multiply
_EXAMPLE: Final = "3.5 * (2 + 4) ** 2"
_ZERO_TO_NEGATIVE: Final = "division by zero: 0 cannot be raised to a negative power"


class CalculatorError(ValueError):
    """An expression was rejected or could not be evaluated.

    ``str(error)`` is a single line written for the model to read.
    """


def _limbs(value: int) -> int:
    """Size of ``value`` in CPython's 30-bit digits (at least 1)."""
    return value.bit_length() // _LIMB_BITS + 1


def _about_digits(bits: float) -> str:
    if not math.isfinite(bits) or bits > 1e15:
        return "an astronomical number of"
    return f"about {int(bits * _LOG10_2) + 1:,}"


def _require_int_bits(bits: float, what: str) -> None:
    """Refuse an integer result estimated to need more than MAX_INT_BITS bits."""
    if bits > MAX_INT_BITS:
        raise CalculatorError(
            f"result too large: {what} would have {_about_digits(bits)} digits "
            f"(the limit is about {int(MAX_INT_BITS * _LOG10_2):,} digits)"
        )


def _show(value: Number) -> str:
    """Short rendering of a number for error messages (never a huge string)."""
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"a number with {_about_digits(value.bit_length())} digits"
        return str(value)
    return format(value, ".15g")


def _whole(value: Number, function: str) -> int:
    """Return ``value`` as an int, accepting integral floats such as 5.0."""
    if isinstance(value, int):
        return value
    if value.is_integer():
        return int(value)
    raise CalculatorError(f"{function}() needs whole numbers, got {_show(value)}")
