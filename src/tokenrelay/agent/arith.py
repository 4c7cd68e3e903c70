"""Arithmetic written in English: the embedded agent's deterministic pre-check for the Calculator.

A 135M-parameter model copies "1234 * 5678" into "1234 ** 5678" now and then; a question
that spells its arithmetic out needs no model to find it. `read_arithmetic` rewrites number
words and common operator phrases ("twelve times seven", "the square root of 71", "15% of
200", "subtract 45 from 100") into calculator syntax and returns the expression when the
question contains exactly one, together with how sure the reading is:

* `explicit`: an operator between numbers written with spaces or as a word ("7 * 8",
  "19 plus 23"), or a math phrase ("square root of", "to the power of", "percent of"): the
  question asks for this computation;
* not explicit: only unspaced "-" or "/" between numbers ("2008-2009", "12/25"), which are
  as often ranges and dates as arithmetic: the model decides, and the expression is still
  offered as the argument if it chooses the Calculator.

`could_compute` is the Calculator's necessary condition: a computation needs two numbers
(digits, number words, pi), or one number and a one-operand math word ("square root",
"squared", "factorial", "half"...). Without that there is nothing to compute - "What
happened in 1969?", "Give me 3 tips" - and the model is not asked at all.

Everything here is pure text processing; nothing is evaluated except by the Calculator's own
safe evaluator, which validates every candidate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tokenrelay.tools.calculator import CONSTANT_NAMES, FUNCTION_NAMES, CalculatorError, calculate

__all__ = ["Arithmetic", "could_compute", "normalize", "read_arithmetic"]

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORD = re.compile(
    r"\b(?:(?:a|an)\s+(?=(?:hundred|thousand|million|billion)\b))?"
    r"(?:(?:" + "|".join([*_UNITS, *_TENS, *_SCALES]) + r")(?:[\s-]+(?:and\s+)?(?="
    r"(?:" + "|".join([*_UNITS, *_TENS, *_SCALES]) + r")\b))?)+\b",
    re.IGNORECASE,
)

N = r"(-?\d+(?:\.\d+)?)"
_LIST = r"(-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)*\s*,?\s*(?:and|&)\s*-?\d+(?:\.\d+)?)"


_AFTER = r"(?:(?<=[\d)])|(?<=\bpi))"  # an operator word between operands: after one...
_BEFORE = r"(?=[-\d(]|pi\b)"  # ...and before the next


def _words_to_number(words: str) -> str:
    total = current = 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word in ("a", "an", "and", ""):
            current = current or (1 if word in ("a", "an") else current)
            continue
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = (current or 1) * 100
        else:
            total += (current or 1) * _SCALES[word]
            current = 0
    return str(total + current)


def _items(text: str) -> list[str]:
    return re.findall(r"-?\d+(?:\.\d+)?", text)


# Phrase rules, applied in order to text whose numbers are digits. Each replaces one math
# phrase by calculator syntax; longer phrases come before the words they contain.
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(p, re.IGNORECASE), f)
    for p, f in [
        (rf"(?:the\s+)?square\s+root\s+of\s+{N}", lambda m: f"sqrt({m[1]})"),
        (rf"(?:the\s+)?cube\s+root\s+of\s+{N}", lambda m: f"cbrt({m[1]})"),
        (rf"{N}\s+squared", lambda m: f"{m[1]} ** 2"),
        (rf"{N}\s+cubed", lambda m: f"{m[1]} ** 3"),
        (rf"{N}\s+(?:raised\s+)?to\s+the\s+power\s+of\s+{N}", lambda m: f"{m[1]} ** {m[2]}"),
        (rf"{N}\s+to\s+the\s+{N}(?:st|nd|rd|th)\s+power", lambda m: f"{m[1]} ** {m[2]}"),
        (rf"{N}\s+raised\s+to\s+{N}", lambda m: f"{m[1]} ** {m[2]}"),
        (rf"{N}\s*(?:%|percent|per\s+cent)\s+of\s+{N}", lambda m: f"{m[1]} / 100 * {m[2]}"),
        (rf"(?:the\s+)?factorial\s+of\s+{N}", lambda m: f"factorial({m[1]})"),
        (rf"{N}\s+factorial\b", lambda m: f"factorial({m[1]})"),
        (rf"{N}!", lambda m: f"factorial({m[1]})"),
        (
            rf"(?:the\s+)?remainder\s+(?:when|of|after)\s+{N}\s+(?:is\s+)?divided\s+by\s+{N}",
            lambda m: f"{m[1]} % {m[2]}",
        ),
        (rf"{N}\s+mod(?:ulo)?\s+{N}", lambda m: f"{m[1]} % {m[2]}"),
        (rf"(?:the\s+)?log(?:arithm)?\s+(?:in\s+)?base\s+{N}\s+of\s+{N}", lambda m: f"log({m[2]}, {m[1]})"),
        (rf"(?:the\s+)?natural\s+log(?:arithm)?\s+of\s+{N}", lambda m: f"log({m[1]})"),
        (rf"\bhalf\s+of\s+{N}", lambda m: f"{m[1]} / 2"),
        (rf"\b(?:a|one)\s+third\s+of\s+{N}", lambda m: f"{m[1]} / 3"),
        (rf"\b(?:a|one)\s+quarter\s+of\s+{N}", lambda m: f"{m[1]} / 4"),
        (rf"\b(?:double|twice)\s+{N}", lambda m: f"2 * {m[1]}"),
        (rf"\btriple\s+{N}", lambda m: f"3 * {m[1]}"),
        (rf"(?:the\s+)?(?:sum|total)\s+of\s+{_LIST}", lambda m: " + ".join(_items(m[1]))),
        (rf"(?:the\s+)?product\s+of\s+{_LIST}", lambda m: " * ".join(_items(m[1]))),
        (
            rf"(?:the\s+)?(?:average|mean)\s+of\s+{_LIST}",
            lambda m: f"({' + '.join(_items(m[1]))}) / {len(_items(m[1]))}",
        ),
        (rf"(?:the\s+)?difference\s+between\s+{N}\s+and\s+{N}", lambda m: f"{m[1]} - {m[2]}"),
        (rf"(?:the\s+)?quotient\s+of\s+{N}\s+(?:and|by)\s+{N}", lambda m: f"{m[1]} / {m[2]}"),
        (rf"\bmultiply\s+{N}\s+(?:by|and|with)\s+{N}", lambda m: f"{m[1]} * {m[2]}"),
        (rf"\bdivide\s+{N}\s+by\s+{N}", lambda m: f"{m[1]} / {m[2]}"),
        (rf"\badd\s+{N}\s+(?:and|to|plus)\s+{N}", lambda m: f"{m[1]} + {m[2]}"),
        (rf"\bsubtract\s+{N}\s+from\s+{N}", lambda m: f"{m[2]} - {m[1]}"),
        (rf"\btake\s+{N}\s+(?:away\s+)?from\s+{N}", lambda m: f"{m[2]} - {m[1]}"),
        (rf"{_AFTER}\s+(?:multiplied\s+by|times|x|×)\s+{_BEFORE}", lambda m: " * "),
        (rf"{_AFTER}\s+(?:divided\s+by|over|÷)\s+{_BEFORE}", lambda m: " / "),
        (rf"{_AFTER}\s+plus\s+{_BEFORE}", lambda m: " + "),
        (rf"{_AFTER}\s+minus\s+{_BEFORE}", lambda m: " - "),
        (r"\s*[×✕]\s*", lambda m: " * "),
        (r"\s*÷\s*", lambda m: " / "),
        (r"−", lambda m: "-"),
    ]
]
_PHRASE_MARK = "\x01"  # wraps text produced by a phrase rule: it is explicit arithmetic


def normalize(text: str) -> str:
    """`text` with number words as digits, thousands separators dropped and math phrases in
    calculator syntax (the rest of the text unchanged)."""
    text = _NUMBER_WORD.sub(lambda m: _words_to_number(m[0]), text)
    text = re.sub(r"\b(\d{1,3}(?:,\d{3})+)(?![\d,])", lambda m: m[1].replace(",", ""), text)
    for pattern, replace in _RULES:
        text = pattern.sub(lambda m, r=replace: _PHRASE_MARK + r(m) + _PHRASE_MARK, text)  # type: ignore[misc]
    return text


_FUNCTION_SET = frozenset(FUNCTION_NAMES)
_NAMES = sorted((*FUNCTION_NAMES, *CONSTANT_NAMES), key=len, reverse=True)
_TOKEN = re.compile(
    r"(?P<num>\d+(?:\.\d+)?)|(?P<name>\b(?:" + "|".join(_NAMES) + r")\b)|(?P<op>\*\*|//|[-+*/%^])"
    r"|(?P<open>\()|(?P<close>\))|(?P<comma>,)|(?P<space>\s+)|(?P<mark>\x01)|(?P<other>.)",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """An expression found in a question."""

    expression: str
    #: the question clearly asks for it (see the module docstring)
    explicit: bool


def _runs(text: str) -> list[tuple[str, bool]]:
    """Maximal stretches of expression tokens, with whether each one is explicit."""
    runs: list[tuple[str, bool]] = []
    parts: list[str] = []
    explicit = False
    depth = 0

    def flush() -> None:
        nonlocal parts, explicit, depth
        run = "".join(parts).strip()
        while run and (run[-1] in "+-*/%^,(" or run.endswith("**")):  # dangling operator
            run = run[:-1].rstrip()
        while run and run[0] in "+*/%^,)":
            run = run[1:].lstrip()
        if run:
            runs.append((run, explicit))
        parts, explicit, depth = [], False, 0

    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        value = m[0]
        if kind == "mark":
            explicit = True
        elif kind in ("num", "name", "open", "close", "op"):
            if kind == "open":
                depth += 1
            elif kind == "close":
                if depth == 0:
                    flush()
                    continue
                depth -= 1
            elif kind == "name" and value.lower() in _FUNCTION_SET or kind == "op" and value not in "-/":
                explicit = True
            elif kind == "op":  # "-" or "/": explicit only with a space before or after
                before = text[m.start() - 1 : m.start()]
                after = text[m.end() : m.end() + 1]
                if before.isspace() or after.isspace():
                    explicit = True
            parts.append(value)
        elif kind == "space" or (kind == "comma" and depth > 0):
            parts.append(value)
        else:
            flush()
    flush()
    return runs


def read_arithmetic(question: str) -> Arithmetic | None:
    """The one arithmetic expression `question` asks for, or None (none, or several)."""
    found: list[Arithmetic] = []
    for run, explicit in _runs(normalize(question)):
        if not re.search(r"\d|\bpi\b", run, re.IGNORECASE):
            continue
        if not (re.search(r"[-+*/%^]|\w\(", run) or explicit):
            continue  # a lone number is not a computation
        try:
            calculate(run)
        except CalculatorError:
            continue
        found.append(Arithmetic(expression=run, explicit=explicit))
    return found[0] if len(found) == 1 else None


_UNARY_WORDS = re.compile(
    r"\b(?:square|squared|cube|cubed|root|roots|factorial|log|logarithm|ln|sin|sine|cos|cosine|tan|tangent"
    r"|exp|exponential|half|double|twice|triple|third|quarter|percent|reciprocal|absolute|round|rounded"
    r"|floor|ceiling|power)\b|[%!√]|\b(?:" + "|".join(FUNCTION_NAMES) + r")\s*\(",
    re.IGNORECASE,
)


def could_compute(question: str) -> bool:
    """Whether `question` has something a calculator could compute (see the module docstring)."""
    text = normalize(question)
    numbers = len(re.findall(r"\d+(?:\.\d+)?|\bpi\b", text, re.IGNORECASE))
    return numbers >= 2 or (numbers == 1 and bool(_UNARY_WORDS.search(question + " " + text)))
