"""The function and constant tables: the only names an expression can refer to."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from tokenrelay.tools.calculator.limits import (
    _COMBINATORIAL_COST,
    _EXAMPLE,
    _LIMB_BITS,
    MAX_FACTORIAL,
    MAX_INT_BITS,
    MAX_ROUND_DIGITS,
    CalculatorError,
    Number,
    _limbs,
    _require_int_bits,
    _show,
    _whole,
)

if TYPE_CHECKING:
    from tokenrelay.tools.calculator.evaluator import _Evaluator


# --------------------------------------------------------------------------
# Function and constant tables (the only names an expression can refer to)
# --------------------------------------------------------------------------

_Impl: TypeAlias = Callable[["_Evaluator", Sequence[Number]], Number]


@dataclass(frozen=True)
class _Function:
    impl: _Impl
    min_args: int
    max_args: int | None  # None: no upper limit
    usage: str


_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _real_function(
    fn: Callable[[float], float],
    domain: Callable[[Number], bool] | None = None,
    domain_error: str = "",
) -> _Impl:
    def impl(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
        x = args[0]
        if domain is not None and not domain(x):
            raise CalculatorError(domain_error)
        return fn(x)

    return impl


def _log(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    x = args[0]
    if x <= 0:
        raise CalculatorError("math domain error: log of zero or a negative number")
    if len(args) == 1:
        return math.log(x)
    base = args[1]
    if base <= 0 or base == 1:
        raise CalculatorError("math domain error: log base must be positive and not 1")
    return math.log(x, base)


def _atan2(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return math.atan2(args[0], args[1])


def _floor(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return math.floor(args[0])


def _ceil(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return math.ceil(args[0])


def _abs(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return abs(args[0])


def _round(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    x = args[0]
    if len(args) == 1:
        return round(x)
    ndigits = _whole(args[1], "round")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round() digits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    if isinstance(x, int):
        # Rounding an int to -n digits divides it by 10**n.
        evaluator.charge(_limbs(x) * (abs(ndigits) // 9 + 1))
    return round(x, ndigits)


def _factorial(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    n = _whole(args[0], "factorial")
    if n < 0:
        raise CalculatorError("math domain error: factorial of a negative number")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial() argument too large: {_show(n)} (the limit is {MAX_FACTORIAL:,})")
    evaluator.charge(n)
    return math.factorial(n)


def _gcd(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    values = [_whole(arg, "gcd") for arg in args]
    result = 0
    for value in values:
        evaluator.charge(max(_limbs(result), _limbs(value)) ** 2)
        result = math.gcd(result, value)
    return result


def _lcm(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    values = [_whole(arg, "lcm") for arg in args]
    result = 1
    for value in values:
        _require_int_bits(result.bit_length() + value.bit_length(), "lcm()")
        evaluator.charge(max(_limbs(result), _limbs(value)) ** 2)
        result = math.lcm(result, value)
    return result


def _charge_combinatorial(evaluator: _Evaluator, bits: float, what: str) -> None:
    _require_int_bits(bits, what)
    evaluator.charge(_COMBINATORIAL_COST * (int(bits) // _LIMB_BITS + 1) ** 2)


def _comb(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    n, k = _whole(args[0], "comb"), _whole(args[1], "comb")
    if n < 0 or k < 0:
        raise CalculatorError("math domain error: comb() needs non-negative whole numbers")
    if k > n:
        return 0
    k = min(k, n - k)
    if k > MAX_INT_BITS:  # comb(n, k) >= 2**k when k <= n / 2
        bits = math.inf
    elif k == 0:
        bits = 1.0
    else:  # log2 of n**k / k!, an upper bound, capped by comb(n, k) <= 2**n
        bits = k * math.log2(n) - math.lgamma(k + 1) / math.log(2)
        bits = min(bits, float(n)) if n <= MAX_INT_BITS else bits
    _charge_combinatorial(evaluator, bits, "comb()")
    return math.comb(n, k)


def _perm(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    n = _whole(args[0], "perm")
    k = n if len(args) == 1 else _whole(args[1], "perm")
    if n < 0 or k < 0:
        raise CalculatorError("math domain error: perm() needs non-negative whole numbers")
    if k > n:
        return 0
    if k > MAX_INT_BITS:  # perm(n, k) >= k! > 2**k
        bits = math.inf
    elif k == 0:
        bits = 1.0
    else:  # log2 of n**k, an upper bound
        bits = k * math.log2(n)
    _charge_combinatorial(evaluator, bits, "perm()")
    return math.perm(n, k)


def _hypot(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return math.hypot(*args)


def _min(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return min(args)


def _max(evaluator: _Evaluator, args: Sequence[Number]) -> Number:
    return max(args)


def _non_negative(x: Number) -> bool:
    return x >= 0


def _positive(x: Number) -> bool:
    return x > 0


def _unit_interval(x: Number) -> bool:
    return -1 <= x <= 1


_LOG_DOMAIN: Final = "math domain error: log of zero or a negative number"


def _unary(fn: Callable[[float], float], name: str) -> _Function:
    return _Function(_real_function(fn), 1, 1, f"{name}(x)")


_FUNCTIONS: Final[dict[str, _Function]] = {
    "sqrt": _Function(
        _real_function(
            math.sqrt,
            _non_negative,
            "math domain error: sqrt of a negative number (complex results are not supported)",
        ),
        1,
        1,
        "sqrt(x)",
    ),
    "cbrt": _unary(math.cbrt, "cbrt"),
    "exp": _unary(math.exp, "exp"),
    "log": _Function(_log, 1, 2, "log(x) for the natural log or log(x, base)"),
    "log10": _Function(_real_function(math.log10, _positive, _LOG_DOMAIN), 1, 1, "log10(x)"),
    "log2": _Function(_real_function(math.log2, _positive, _LOG_DOMAIN), 1, 1, "log2(x)"),
    "sin": _unary(math.sin, "sin"),
    "cos": _unary(math.cos, "cos"),
    "tan": _unary(math.tan, "tan"),
    "asin": _Function(
        _real_function(math.asin, _unit_interval, "math domain error: asin() needs a value between -1 and 1"),
        1,
        1,
        "asin(x)",
    ),
    "acos": _Function(
        _real_function(math.acos, _unit_interval, "math domain error: acos() needs a value between -1 and 1"),
        1,
        1,
        "acos(x)",
    ),
    "atan": _unary(math.atan, "atan"),
    "atan2": _Function(_atan2, 2, 2, "atan2(y, x)"),
    "sinh": _unary(math.sinh, "sinh"),
    "cosh": _unary(math.cosh, "cosh"),
    "tanh": _unary(math.tanh, "tanh"),
    "degrees": _unary(math.degrees, "degrees"),
    "radians": _unary(math.radians, "radians"),
    "floor": _Function(_floor, 1, 1, "floor(x)"),
    "ceil": _Function(_ceil, 1, 1, "ceil(x)"),
    "abs": _Function(_abs, 1, 1, "abs(x)"),
    "round": _Function(_round, 1, 2, "round(x) or round(x, digits)"),
    "factorial": _Function(_factorial, 1, 1, "factorial(n)"),
    "gcd": _Function(_gcd, 1, None, "gcd(a, b, ...)"),
    "lcm": _Function(_lcm, 1, None, "lcm(a, b, ...)"),
    "comb": _Function(_comb, 2, 2, "comb(n, k)"),
    "perm": _Function(_perm, 1, 2, "perm(n, k)"),
    "hypot": _Function(_hypot, 1, None, "hypot(x, y, ...)"),
    "min": _Function(_min, 1, None, "min(a, b, ...)"),
    "max": _Function(_max, 1, None, "max(a, b, ...)"),
}

_FUNCTION_LIST: Final = ", ".join(_FUNCTIONS)
FUNCTION_NAMES: Final[tuple[str, ...]] = tuple(_FUNCTIONS)
"""The function names an expression may call (for grammars and parsers of expressions)."""
CONSTANT_NAMES: Final[tuple[str, ...]] = tuple(_CONSTANTS)

_NAME_HINTS: Final[dict[str, str]] = {
    "ln": "use log(x) for the natural logarithm",
    "pow": "use x ** y (or x ^ y) for powers",
    "power": "use x ** y (or x ^ y) for powers",
    "arcsin": "use asin(x)",
    "arccos": "use acos(x)",
    "arctan": "use atan(x)",
    "fact": "use factorial(n)",
    "mod": "use x % y for the remainder",
    "inf": "infinity is not supported",
    "infinity": "infinity is not supported",
    "nan": "NaN is not supported",
    "math": "call functions directly, e.g. sqrt(2) rather than math.sqrt(2)",
}

CALCULATOR_DESCRIPTION: Final[str] = (
    "Useful for arithmetic and other math: evaluates one numeric expression and "
    "returns the result as a number (integers exactly, decimals to 15 significant "
    "digits). Input: a single math expression such as `sqrt(71)` or "
    f"`{_EXAMPLE}`. Supported: numbers, + - * / // % (remainder, not percent), "
    "** for powers (^ also means power, not xor), parentheses, the constants pi, "
    f"e and tau, and the functions {_FUNCTION_LIST}; trigonometric functions use "
    "radians. Variables, units, words, = signs, percent signs and thousands "
    "separators are not supported (write 1000, not 1,000)."
)
