"""The embedded agent's arithmetic pre-check: English maths into calculator expressions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenrelay.agent.arith import could_compute, normalize, read_arithmetic
from tokenrelay.tools.calculator import calculate


@pytest.mark.parametrize(
    ("question", "expression"),
    [
        ("What is 1234 * 5678?", "1234 * 5678"),
        ("Compute 144 / 12.", "144 / 12"),
        ("Calculate (3 + 4) * 5", "(3 + 4) * 5"),
        ("what is 2^10?", "2^10"),
        ("12.5 * 4 = ?", "12.5 * 4"),
        ("What is twelve times seven?", "12 * 7"),
        ("What is three hundred and forty-two plus one?", "342 + 1"),
        ("What is 250 divided by 5?", "250 / 5"),
        ("Subtract 45 from 100.", "100 - 45"),
        ("Multiply 6 by 7.", "6 * 7"),
        ("What is the sum of 45, 55 and 100?", "45 + 55 + 100"),
        ("What is the average of 4, 8 and 12?", "(4 + 8 + 12) / 3"),
        ("What is the square root of 71?", "sqrt(71)"),
        ("What is 2 to the power of 16?", "2 ** 16"),
        ("What is 5 squared?", "5 ** 2"),
        ("What is 15% of 200?", "15 / 100 * 200"),
        ("What is the factorial of 6?", "factorial(6)"),
        ("What is the remainder when 17 is divided by 5?", "17 % 5"),
        ("What is half of 250?", "250 / 2"),
        ("What is log base 2 of 1024?", "log(1024, 2)"),
        ("What is 1,000 * 3?", "1000 * 3"),
        ("What is pi times 2?", "pi * 2"),
        ("How much is 3 x 4?", "3 * 4"),
    ],
)
def test_explicit_arithmetic_is_read(question: str, expression: str) -> None:
    found = read_arithmetic(question)
    assert found is not None and found.explicit
    assert found.expression == expression


@pytest.mark.parametrize(
    "question",
    [
        "Tell me about the 2008-2009 crisis.",  # a range, not a subtraction
        "Call me at 555-1234.",
        "What happened on 12/25/2023?",  # a date, not a division
    ],
)
def test_unspaced_minus_and_slash_are_left_to_the_model(question: str) -> None:
    found = read_arithmetic(question)
    assert found is not None and not found.explicit


@pytest.mark.parametrize(
    "question",
    [
        "Tell me about Paris.",
        "What happened in 1969?",
        "A 1920x1080 screen: is it good?",
        "Is 2 + 2 = 4 and 3 + 3 = 6?",  # two expressions: ambiguous, the model decides
        "Which is bigger, 7 or 9?",
        "Compute something nice.",  # the e of "Compute" is not the constant e
    ],
)
def test_no_single_expression(question: str) -> None:
    assert read_arithmetic(question) is None


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Tell me about Paris.", False),
        ("What happened in 1969?", False),  # one number, nothing to do with it
        ("Give me 3 tips for better sleep.", False),
        ("What is the square root of 71?", True),  # one number and a one-operand word
        ("What is 5 factorial?", True),
        ("What is half of two hundred?", True),
        ("I have 2 cats and 3 dogs.", True),  # two numbers: the model decides
        ("What is twelve times seven?", True),
    ],
)
def test_could_compute(question: str, expected: bool) -> None:
    assert could_compute(question) is expected


def test_normalize_leaves_other_text_alone() -> None:
    assert normalize("Tell me a story.") == "Tell me a story."
    assert "1000000" in normalize("a million people")


_OPS = {"+": ("plus", "+"), "-": ("minus", "-"), "*": ("times", "*"), "/": ("divided by", "/")}


@given(
    a=st.integers(0, 10**6),
    b=st.integers(1, 10**6),
    op=st.sampled_from(sorted(_OPS)),
    words=st.booleans(),
    template=st.sampled_from(["What is {}?", "what's {}", "Compute {}.", "{} = ?", "How much is {}?"]),
)
def test_any_binary_question_is_computed_right(a: int, b: int, op: str, words: bool, template: str) -> None:
    spelled = _OPS[op][0] if words else _OPS[op][1]
    found = read_arithmetic(template.format(f"{a} {spelled} {b}"))
    assert found is not None and found.explicit
    assert calculate(found.expression) == calculate(f"{a} {op} {b}")


@given(n=st.integers(0, 999_999))
def test_number_words_round_trip(n: int) -> None:
    assert normalize(_spell(n)) == str(n)


def _spell(n: int) -> str:
    units = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    units += "sixteen seventeen eighteen nineteen"
    small = units.split()
    tens = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

    def below_thousand(x: int) -> str:
        parts = []
        if x >= 100:
            parts.append(f"{small[x // 100]} hundred")
            x %= 100
            if x:
                parts.append("and")
        if x >= 20:
            parts.append(tens[x // 10] + (f"-{small[x % 10]}" if x % 10 else ""))
        elif x or not parts:
            parts.append(small[x])
        return " ".join(parts)

    if n >= 1000:
        rest = n % 1000
        return f"{below_thousand(n // 1000)} thousand" + (f" {below_thousand(rest)}" if rest else "")
    return below_thousand(n)
