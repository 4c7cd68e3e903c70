"""Safe arithmetic evaluator behind the agent's ``Calculator`` tool.

The Calculator replaces LangChain's ``llm-math`` chain, which passed model
output to ``eval``/``numexpr.evaluate`` and so allowed remote code execution
(CVE-2023-29374, CVE-2023-39631). Here model output is treated as untrusted
data and interpreted, never executed.

Security invariants (each one is covered by ``tests/tools/test_calculator.py``):

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

from tokenrelay.tools.calculator.evaluator import _Evaluator, _format
from tokenrelay.tools.calculator.functions import CALCULATOR_DESCRIPTION, CONSTANT_NAMES, FUNCTION_NAMES
from tokenrelay.tools.calculator.limits import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_FACTORIAL,
    MAX_INT_BITS,
    MAX_NODES,
    MAX_PAREN_DEPTH,
    MAX_RESULT_DIGITS,
    MAX_ROUND_DIGITS,
    WORK_BUDGET,
    CalculatorError,
)
from tokenrelay.tools.calculator.syntax import _normalise, _parse, _validate

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
