"""Safe arithmetic evaluator behind the agent's ``Calculator`` tool.

The Calculator replaces LangChain's ``llm-math`` chain, which passed model
output to ``eval``/``numexpr.evaluate`` and so allowed remote code execution
(CVE-2023-29374, CVE-2023-39631). Here model output is treated as untrusted
data and interpreted, never executed.

Security invariants (each one is covered by ``tests/test_calculator.py``):

1. No code execution. The input is parsed with ``ast.parse(text, mode="eval")``
   and the tree is walked by this module. Nothing here calls ``eval``,
   ``exec``, ``compile`` to bytecode, ``numexpr`` or ``sympy``, imports
   anything, or looks up a name or attribute chosen by the input: names are
   only keys into two fixed tables (``_FUNCTIONS`` and ``_CONSTANTS``).
2. Lexical gate before parsing. At most ``MAX_EXPRESSION_LENGTH`` (1,000)
   characters. After the multiplication, division and minus signs (U+00D7,
   U+00F7, U+2212) are mapped to ``*``, ``/`` and ``-``, only ASCII letters,
   digits, spaces/tabs/newlines and ``+ - * / % ^ ( ) . , _`` may appear.
   Every other character is rejected, including NUL and other control
   characters and all non-ASCII characters, so the parser's NFKC identifier
   normalisation (full-width letters spelling ``eval``, U+212F script small e)
   can never turn look-alike text into a real name. Parentheses may nest at
   most ``MAX_PAREN_DEPTH`` (50) deep.
3. Whitelisted grammar, checked over the whole tree before anything is
   computed: int and float literals (not bool, complex, str, bytes, None or
   ``...``), the constants ``pi``, ``e`` and ``tau``, unary ``+``/``-``, binary
   ``+ - * / // % **``, and calls of whitelisted functions by plain name with
   positional arguments and a checked argument count. ``^`` is rewritten to
   ``**`` before parsing: it means power, as models use it (``71^0.5``), and
   is NOT bitwise xor. Everything else (names such as ``os`` or ``inf``,
   attributes, subscripts, keyword or starred arguments, comparisons, boolean
   operators, lambdas, comprehensions, f-strings, containers, ``:=``,
   conditional expressions, ...) raises ``CalculatorError``. Commas only
   separate function arguments; thousands separators such as ``1,000`` are
   not supported.
4. Resource bounds, enforced before the expensive step: at most
   ``MAX_NODES`` (500) expression nodes and ``MAX_DEPTH`` (200) levels of
   nesting (checked iteratively, so deep input can never raise
   ``RecursionError``); integers of at most ``MAX_INT_BITS`` (100,000) bits,
   with the size of ``**``, ``*``, ``lcm``, ``comb`` and ``perm`` results
   estimated before computing them (so ``9**9**9**9`` and ``2**10**10`` are
   refused at once); ``factorial`` of at most ``MAX_FACTORIAL`` (1,000);
   ``round`` to at most ``MAX_ROUND_DIGITS`` digits; and a per-call work
   budget (``WORK_BUDGET``) charged with the estimated cost of every
   big-integer operation, which bounds the total time of an expression, not
   just of each operation. Floats must stay finite, and a final integer
   result may have at most ``MAX_RESULT_DIGITS`` (4,000) digits. With these
   bounds any input is answered or refused in a few milliseconds.
5. Every failure is a ``CalculatorError`` (a ``ValueError``) whose message is
   one line the model can act on, e.g. ``name 'os' is not allowed; use
   numbers and math functions like sqrt(2)``. Messages never echo long input.

Results are plain number strings: ints exactly (``str(int)``), floats rounded
to 15 significant digits with trailing zeros dropped (``sqrt(71)`` gives
``8.42614977317636``, ``4.0`` gives ``4``). Python semantics apply otherwise:
``-3**2 == -9``, ``//`` and ``%`` floor towards minus infinity, ``round``
rounds halves to even, trigonometry uses radians.

The module keeps no state between calls and is safe to use from several
threads at once.
"""

from __future__ import annotations

import ast
import math
import re
import string
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "CALCULATOR_DESCRIPTION",
    "CONSTANT_NAMES",
    "FUNCTION_NAMES",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_FACTORIAL",
    "MAX_INT_BITS",
    "MAX_NODES",
    "MAX_PAREN_DEPTH",
    "MAX_RESULT_DIGITS",
    "MAX_ROUND_DIGITS",
    "WORK_BUDGET",
    "CalculatorError",
    "calculate",
]

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


# --------------------------------------------------------------------------
# Step 1: normalise and check the text before it reaches the parser
# --------------------------------------------------------------------------

_OPERATOR_TRANSLATION: Final = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u2212": "-"})
_WHITESPACE: Final = " \t\r\n"  # only ASCII whitespace; str.strip() would also eat U+2028 etc.
_ALLOWED_CHARS: Final = frozenset(string.ascii_letters + string.digits + _WHITESPACE + "+-*/%^().,_")
_FENCE_TAGS: Final = frozenset({"", "python", "py", "math", "text", "plaintext", "calc"})
# A comma followed by a group starting with 0 ("1,000", "2,050") is a thousands
# separator; as Python it is either a syntax error or a silently wrong tuple.
_THOUSANDS_SEPARATOR: Final = re.compile(r"\d,0\d")
# A numeric literal directly followed by a letter ("2pi", "3x", "1if", "0x1for")
# is implicit multiplication, a unit or a keyword trick. Python rejects most of
# these but parses some with a SyntaxWarning; refusing them here keeps the
# parser quiet and gives the model a better message. Possessive quantifiers
# keep the scan linear.
_NUMBER_THEN_LETTER: Final = re.compile(
    r"(?<![\w.])"
    r"(?>0[xXoObB][0-9a-fA-F_]*+"
    r"|(?:\d[\d_]*+(?:\.[\d_]*+)?+|\.\d[\d_]*+)(?:[eE][+-]?+\d[\d_]*+)?+)"
    r"[A-Za-z_]"
)

_NO_BRACKETS: Final = "square brackets are not allowed (no lists or indexing); use parentheses for grouping"
_CHAR_HINTS: Final[dict[str, str]] = {
    "'": "strings are not allowed",
    '"': "strings are not allowed",
    "`": "backticks are only allowed around the whole expression",
    "[": _NO_BRACKETS,
    "]": _NO_BRACKETS,
    "{": "braces are not allowed",
    "}": "braces are not allowed",
    "=": "no assignments, comparisons or keyword arguments; pass arguments by position, e.g. round(2.567, 2)",
    "<": "comparisons are not allowed",
    ">": "comparisons are not allowed",
    "!": "comparisons and factorial signs are not allowed; use factorial(n)",
    "&": "bitwise operators are not allowed",
    "|": "bitwise operators are not allowed",
    "~": "bitwise operators are not allowed",
    ":": "no lambdas, slices or assignments",
    ";": "only one expression is allowed",
    "#": "comments are not allowed",
    "@": "matrix multiplication is not supported",
    "\\": "backslashes are not allowed",
    "$": "currency and other symbols are not supported; send only the numbers",
}


def _strip_wrappers(text: str) -> str:
    """Remove surrounding whitespace, backticks/code fences, quotes and a trailing '='."""
    text = text.strip(_WHITESPACE)
    for _ in range(4):
        before = text
        if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
            text = text[3:-3]
            tag, newline, rest = text.partition("\n")
            if newline and tag.strip().lower() in _FENCE_TAGS:
                text = rest
        elif len(text) >= 2 and text[0] == text[-1] and text[0] in "`'\"":
            text = text[1:-1]
        text = text.strip(_WHITESPACE)
        if text.endswith("="):
            text = text[:-1].rstrip(_WHITESPACE)
        if text == before:
            break
    return text


def _describe_char(char: str, position: int) -> str:
    code = ord(char)
    if code < 32 or code == 127:
        return f"control character U+{code:04X} at position {position} is not allowed"
    if code > 127:
        name = unicodedata.name(char, "unnamed character")
        return (
            f"non-ASCII character U+{code:04X} ({name}) at position {position} is not "
            "allowed; use plain ASCII digits, operators and function names like sqrt(2)"
        )
    hint = _CHAR_HINTS.get(char, "use numbers, + - * / // % ** ^, parentheses and functions like sqrt(2)")
    return f"character {char!r} at position {position} is not allowed: {hint}"


def _normalise(expression: str) -> str:
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string such as 'sqrt(2)'")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculatorError(
            f"expression is too long ({len(expression):,} characters; the limit is "
            f"{MAX_EXPRESSION_LENGTH:,}); split it into smaller calculations"
        )
    text = _strip_wrappers(expression.translate(_OPERATOR_TRANSLATION))
    if not text:
        raise CalculatorError(f"empty expression; send a math expression such as {_EXAMPLE}")
    depth = 0
    for index, char in enumerate(text):
        if char not in _ALLOWED_CHARS:
            raise CalculatorError(_describe_char(char, index + 1))
        if char == "(":
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                raise CalculatorError(
                    f"parentheses are nested too deeply (the limit is {MAX_PAREN_DEPTH} levels)"
                )
        elif char == ")":
            depth -= 1
    if _THOUSANDS_SEPARATOR.search(text):
        raise CalculatorError("thousands separators like 1,000 are not supported; write 1000")
    glued = _NUMBER_THEN_LETTER.search(text)
    if glued:
        raise CalculatorError(
            f"a number is followed directly by a letter at position {glued.end()}: write "
            "multiplication explicitly (2*pi, not 2pi); units and complex numbers are "
            "not supported"
        )
    return text.replace("^", "**")


# --------------------------------------------------------------------------
# Step 2: parse and check the whole tree against the whitelist
# --------------------------------------------------------------------------


def _parse(text: str) -> ast.Expression:
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        detail = (exc.msg or "invalid syntax").splitlines()[0][:120]
        where = f" at position {exc.offset}" if exc.offset else ""
        raise CalculatorError(
            f"invalid expression: {detail}{where}; send one math expression such as {_EXAMPLE}"
        ) from None
    except (ValueError, MemoryError, RecursionError):
        raise CalculatorError(f"invalid expression; send one math expression such as {_EXAMPLE}") from None


_BINOP_SYMBOLS: Final[dict[type[ast.operator], str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_FORBIDDEN_OPERATORS: Final[dict[type[ast.AST], str]] = {
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "xor",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}
_FORBIDDEN_NODES: Final[dict[type[ast.AST], str]] = {
    ast.Subscript: "indexing and slicing ([...]) are not allowed",
    ast.Compare: "comparisons (==, <, >, in, is, ...) are not allowed",
    ast.BoolOp: "boolean operators (and, or) are not allowed",
    ast.Lambda: "lambda functions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.NamedExpr: "assignments (:=) are not allowed",
    ast.IfExp: "conditional expressions (x if c else y) are not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Starred: "starred arguments (*args) are not allowed",
    ast.Slice: "slices are not allowed",
}
_TUPLE_MESSAGE: Final = (
    "commas may only separate function arguments; use '.' as the decimal point and no "
    "thousands separators (write 1000.5, not 1,000.5)"
)


def _name_error(name: str, as_function: bool) -> CalculatorError:
    kind = "function" if as_function else "name"
    message = f"{kind} '{name[:40]}' is not allowed"
    lowered = name.lower()
    if lowered != name and (lowered in _FUNCTIONS or lowered in _CONSTANTS):
        message += f"; did you mean '{lowered}'?"
    elif lowered in _NAME_HINTS:
        message += f"; {_NAME_HINTS[lowered]}"
    elif as_function:
        message += f"; available functions: {_FUNCTION_LIST}"
    else:
        message += "; use numbers and math functions like sqrt(2) (constants: pi, e, tau)"
    return CalculatorError(message)


def _check_constant(node: ast.Constant) -> None:
    value = node.value
    if isinstance(value, bool) or value is None or value is Ellipsis:
        raise CalculatorError(f"{value!r} is not allowed; use numbers")
    if isinstance(value, str):
        raise CalculatorError("strings are not allowed; send a math expression such as sqrt(2)")
    if isinstance(value, bytes):
        raise CalculatorError("bytes literals are not allowed")
    if isinstance(value, complex):
        raise CalculatorError("complex numbers (like 2j) are not supported")
    if isinstance(value, int):
        _require_int_bits(value.bit_length(), "a number")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("number too large (floats must be below about 1.8e308)")
    else:  # pragma: no cover - the parser produces no other constants
        raise CalculatorError(f"{type(value).__name__} literals are not allowed")


def _check_call(node: ast.Call) -> None:
    func = node.func
    if isinstance(func, ast.Attribute):
        raise CalculatorError(
            f"attribute access ('.{func.attr[:40]}') is not allowed; call functions "
            "directly, e.g. sqrt(2) rather than math.sqrt(2)"
        )
    if not isinstance(func, ast.Name):
        raise CalculatorError(
            "only the math functions can be called, e.g. sqrt(2); write multiplication "
            "explicitly, e.g. 2*(3+4) rather than 2(3+4)"
        )
    name = func.id
    if name in _CONSTANTS:
        raise CalculatorError(f"'{name}' is a constant, not a function")
    spec = _FUNCTIONS.get(name)
    if spec is None:
        raise _name_error(name, as_function=True)
    if node.keywords:
        raise CalculatorError(f"keyword arguments are not allowed; pass arguments by position: {spec.usage}")
    count = len(node.args)
    if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
        if spec.max_args is None:
            expected = f"at least {spec.min_args}"
        elif spec.min_args == spec.max_args:
            expected = f"exactly {spec.min_args}"
        else:
            expected = f"{spec.min_args} or {spec.max_args}"
        plural = "" if expected.endswith(" 1") else "s"
        raise CalculatorError(
            f"{name}() takes {expected} argument{plural} ({count} given); usage: {spec.usage}"
        )


def _children(node: ast.expr) -> list[ast.expr]:
    """Return the sub-expressions of an allowed node; raise for anything else."""
    if isinstance(node, ast.Constant):
        _check_constant(node)
        return []
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return []
        if node.id in _FUNCTIONS:
            raise CalculatorError(f"'{node.id}' is a function; call it like {node.id}(2)")
        raise _name_error(node.id, as_function=False)
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.UAdd, ast.USub)):
            symbol = _FORBIDDEN_OPERATORS.get(type(node.op), type(node.op).__name__)
            raise CalculatorError(f"operator '{symbol}' is not allowed")
        return [node.operand]
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOP_SYMBOLS:
            symbol = _FORBIDDEN_OPERATORS.get(type(node.op), type(node.op).__name__)
            raise CalculatorError(
                f"operator '{symbol}' is not allowed; allowed operators: + - * / // % ** (^ also means power)"
            )
        return [node.left, node.right]
    if isinstance(node, ast.Call):
        _check_call(node)
        return list(node.args)
    if isinstance(node, ast.Attribute):
        raise CalculatorError(
            f"attribute access ('.{node.attr[:40]}') is not allowed; use numbers and "
            "math functions like sqrt(2)"
        )
    if isinstance(node, ast.Tuple):
        raise CalculatorError(_TUPLE_MESSAGE)
    message = _FORBIDDEN_NODES.get(type(node))
    if message is None:
        message = f"'{type(node).__name__}' expressions are not allowed"
    raise CalculatorError(message)


def _validate(tree: ast.Expression) -> None:
    """Check every node against the whitelist and the size limits, without recursion."""
    stack: list[tuple[ast.expr, int]] = [(tree.body, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise CalculatorError(
                f"expression is too complex (more than {MAX_NODES} terms); split it into smaller calculations"
            )
        if depth > MAX_DEPTH:
            raise CalculatorError(
                f"expression is nested too deeply (more than {MAX_DEPTH} levels); "
                "split it into smaller calculations"
            )
        stack.extend((child, depth + 1) for child in _children(node))


# --------------------------------------------------------------------------
# Step 3: evaluate the checked tree within the resource bounds
# --------------------------------------------------------------------------


@contextmanager
def _arithmetic_errors(where: str) -> Iterator[None]:
    """Turn arithmetic exceptions raised inside the block into CalculatorError."""
    try:
        yield
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError(f"division by zero in {where}") from None
    except OverflowError as exc:
        if "convert" in str(exc) or "for a float" in str(exc):
            detail = "number too large to convert to floating point (the limit is about 1.8e308)"
        else:
            detail = "result too large (floating-point overflow; the limit is about 1.8e308)"
        raise CalculatorError(f"{detail} in {where}") from None
    except ValueError:
        raise CalculatorError(f"math domain error in {where}") from None


def _checked(value: object) -> Number:
    """Accept only finite floats and ints within MAX_INT_BITS."""
    if isinstance(value, int) and not isinstance(value, bool):
        _require_int_bits(value.bit_length(), "the result")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise CalculatorError("math domain error: the result is undefined (NaN)")
        if math.isinf(value):
            raise CalculatorError("result too large (floating-point overflow; the limit is about 1.8e308)")
        return value
    raise CalculatorError("math domain error: the result is not a real number")


class _Evaluator:
    """Evaluates one validated tree; tracks the work budget of a single call."""

    __slots__ = ("_budget",)

    def __init__(self) -> None:
        self._budget = WORK_BUDGET

    def charge(self, units: int) -> None:
        self._budget -= units
        if self._budget < 0:
            raise CalculatorError(
                "expression needs too much computation (very large integers); "
                "use smaller numbers or split it into steps"
            )

    def evaluate(self, node: ast.expr) -> Number:
        self.charge(1)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
        elif isinstance(node, ast.Name):
            constant = _CONSTANTS.get(node.id)
            if constant is not None:
                return constant
        elif isinstance(node, ast.UnaryOp):
            operand = self.evaluate(node.operand)
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
        elif isinstance(node, ast.BinOp):
            left = self.evaluate(node.left)
            right = self.evaluate(node.right)
            return self._binary(node.op, left, right)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            spec = _FUNCTIONS.get(node.func.id)
            if spec is not None:
                args = [self.evaluate(arg) for arg in node.args]
                with _arithmetic_errors(f"{node.func.id}()"):
                    return _checked(spec.impl(self, args))
        # Unreachable for validated trees; kept so a validator bug fails closed.
        raise CalculatorError(f"'{type(node).__name__}' expressions are not allowed")

    def _binary(self, op: ast.operator, a: Number, b: Number) -> Number:
        symbol = _BINOP_SYMBOLS.get(type(op))
        if symbol is None:  # unreachable for validated trees
            raise CalculatorError("operator is not allowed")
        with _arithmetic_errors(f"'{symbol}'"):
            if isinstance(op, ast.Pow):
                return _checked(self._power(a, b))
            if isinstance(op, (ast.Add, ast.Sub)):
                if isinstance(a, int) and isinstance(b, int):
                    self.charge(max(_limbs(a), _limbs(b)))
                return _checked(a + b if isinstance(op, ast.Add) else a - b)
            if isinstance(op, ast.Mult):
                if isinstance(a, int) and isinstance(b, int):
                    if a and b:
                        _require_int_bits(a.bit_length() + b.bit_length() - 1, "the product")
                    self.charge(_limbs(a) * _limbs(b))
                return _checked(a * b)
            if b == 0:
                raise CalculatorError(f"division by zero in '{symbol}'")
            if isinstance(a, int) and isinstance(b, int):
                # int / int is linear time; // and % are quadratic long division.
                linear = isinstance(op, ast.Div)
                self.charge(_limbs(a) + _limbs(b) if linear else _limbs(a) * _limbs(b))
            if isinstance(op, ast.Div):
                return _checked(a / b)
            if isinstance(op, ast.FloorDiv):
                return _checked(a // b)
            return _checked(a % b)

    def _power(self, base: Number, exponent: Number) -> object:
        if isinstance(base, int) and isinstance(exponent, int):
            if exponent < 0:
                if base == 0:
                    raise CalculatorError(_ZERO_TO_NEGATIVE)
                return base**exponent  # a float; Python converts both operands first
            if base in (0, 1):
                return base if exponent else 1
            if base == -1:
                return 1 if exponent % 2 == 0 else -1
            if exponent > MAX_INT_BITS:  # |base| >= 2, so the result has > exponent bits
                _require_int_bits(math.inf, "the power")
            bits = exponent * math.log2(abs(base))
            _require_int_bits(bits, "the power")
            self.charge((int(bits) // _LIMB_BITS + 1) ** 2 // 4)
            return base**exponent
        x, y = float(base), float(exponent)
        if x == 0 and y < 0:
            raise CalculatorError(_ZERO_TO_NEGATIVE)
        if x < 0 and not y.is_integer():
            raise CalculatorError(
                "math domain error: negative number raised to a fractional power "
                "(complex results are not supported)"
            )
        return x**y


def _format(value: Number) -> str:
    if isinstance(value, int):
        if value.bit_length() > _MAX_RESULT_BITS:
            raise CalculatorError(
                f"result has {_about_digits(value.bit_length())} digits; results are "
                f"limited to {MAX_RESULT_DIGITS:,} digits"
            )
        try:
            return str(value)
        except ValueError:  # sys.set_int_max_str_digits() set below our limit
            raise CalculatorError("result has too many digits to display") from None
    if value == 0:
        return "0"  # also turns -0.0 into "0"
    text = format(value, ".15g")
    if math.isinf(float(text)):  # 15 digits can round past the largest float
        text = repr(value)
    return text


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression from untrusted input.

    Returns the result as a plain number string (``"8.42614977317636"`` for
    ``"sqrt(71)"``). Raises ``CalculatorError`` with a one-line message for
    anything that is not an allowed, bounded arithmetic expression.
    """
    text = _normalise(expression)
    tree = _parse(text)
    _validate(tree)
    try:
        value = _Evaluator().evaluate(tree.body)
    except RecursionError:  # only if the caller's stack was already nearly full
        raise CalculatorError("expression is nested too deeply") from None
    return _format(value)
