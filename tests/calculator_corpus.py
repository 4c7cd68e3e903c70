"""The calculator's security corpus: tests/payloads/calculator_payloads.txt (its format is at the
top of that file) plus generated payloads; shared by the calculator tests and the server's
hostile-input tests."""

from __future__ import annotations

from pathlib import Path

from tokenrelay.tools.calculator import MAX_EXPRESSION_LENGTH

__all__ = ["CORPUS", "PAYLOADS", "PWNED_MARKER", "fill"]

PAYLOAD_FILE = Path(__file__).resolve().parent / "payloads" / "calculator_payloads.txt"
PWNED_MARKER = Path("/tmp/tokenrelay_pwned")
ESCAPED_PREFIX = "escaped:"


def _load_corpus() -> list[str]:
    payloads = []
    for line in PAYLOAD_FILE.read_text(encoding="utf-8").split("\n"):
        line = line.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        if line.startswith(ESCAPED_PREFIX):
            escaped = line[len(ESCAPED_PREFIX) :]
            assert escaped.isascii(), f"escaped: lines must be ASCII: {line!r}"
            line = escaped.encode("ascii").decode("unicode_escape")
        payloads.append(line)
    return payloads


def fill(term: str, sep: str = "+") -> str:
    """Repeat ``term`` joined by ``sep`` as often as fits in MAX_EXPRESSION_LENGTH."""
    count = (MAX_EXPRESSION_LENGTH + len(sep)) // (len(term) + len(sep))
    return sep.join([term] * count)


def _generated_payloads() -> list[str]:
    """Payloads too large or too repetitive to keep in the corpus file."""
    return [
        "1" * 1_000_000,  # a 1 MB string
        "a" * 1_000_000,
        "1+" * 500_000 + "1",
        "-" * 100_000 + "1",
        "-" * 10_000 + "1",
        "-" * 999 + "1",
        "+-" * 499 + "1",
        "(" * 500 + "1" + ")" * 500,
        "(" * 400 + "1" + ")" * 400,
        "(" * 51 + "1" + ")" * 51,
        "(1)*" * 5_000 + "1",
        "(1)*" * 249 + "1",
        "1+" * 499 + "1",
        "2**" * 333 + "2",
        "sqrt(" * 150 + "1" + ")" * 150,
        "max(" + ",".join(["1"] * 499) + ")",
        "9" * 1_001,
        "\x00" * 1_000,
        "1+1" + "\x00" * 100,
        "__import__('os').system('touch /tmp/tokenrelay_pwned')" + " " * 1_000,
        " " * 1_000,
        "'" + "a" * 998 + "'",
        fill("9**31500//7**17800"),
        fill("9**31500%7**17800", "-"),
        fill("comb(10000,5000)"),
        fill("perm(3000)"),
        fill("gcd(9**20000,7**20000+1)"),
        fill("lcm(3**40000,7**20000+1)", "*"),
        fill("2**99999", "*"),
        fill("9**31000", "//"),
        fill("factorial(1000)", "*"),
        fill("round(3**60000,-1000)"),
    ]


CORPUS = _load_corpus()
PAYLOADS = CORPUS + _generated_payloads()
