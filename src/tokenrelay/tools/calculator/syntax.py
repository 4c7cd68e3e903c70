"""Steps 1 and 2: normalise and check the text, parse it, and check the whole tree against
the whitelisted grammar and its size bounds before anything is computed."""

from __future__ import annotations

import ast
import math
import re
import string
import unicodedata
from typing import Final

from tokenrelay.tools.calculator.functions import _CONSTANTS, _FUNCTION_LIST, _FUNCTIONS, _NAME_HINTS
from tokenrelay.tools.calculator.limits import (
    _EXAMPLE,
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_NODES,
    MAX_PAREN_DEPTH,
    CalculatorError,
    _require_int_bits,
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
