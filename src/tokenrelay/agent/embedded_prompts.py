"""Prompts of the embedded agent: few-shot decisions and argument writing for small models.

The decision is a classification read from one next-token distribution: the model sees a
few labelled messages in its own chat template and the question, and the agent compares the
log-probabilities of the labels ("math" for the Calculator, a tool's name for other tools,
"chat" for answering directly). Labels are short common words because a 135M model's
likelihoods of rare multi-token names carry little signal ("Calculator" as a label separated
arithmetic from chit-chat far worse than "math" on the development set, bench/README.md).

The examples here are not the evaluation set's questions (bench/embedded_eval_set.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tokenrelay.messages import Message
from tokenrelay.tools.calculator import CONSTANT_NAMES, FUNCTION_NAMES
from tokenrelay.tools.registry import Tool

__all__ = [
    "ANSWER_LABEL",
    "CALCULATOR_LABEL",
    "argument_messages",
    "decision_messages",
    "expression_grammar",
    "expression_messages",
    "label_of",
    "tool_result_note",
]

ANSWER_LABEL = "chat"
CALCULATOR_LABEL = "math"

_CALCULATOR_ONLY_SYSTEM = (
    'You decide if a message needs a calculator. Reply "math" if answering it requires computing a '
    'number from numbers in the message (arithmetic, percentages, powers, roots). Reply "chat" for '
    "everything else: greetings, facts, stories, advice, questions about a document, even when they "
    "mention numbers."
)

_CALCULATOR_EXAMPLES = [
    ("What is 37 * 12?", "math"),
    ("Tell me about London.", "chat"),
    ("What is nine plus four?", "math"),
    ("How are you today?", "chat"),
    ("What is the square root of 50?", "math"),
    ("Give me 5 ideas for a birthday party.", "chat"),
    ("Divide 300 by 4.", "math"),
    ("Who painted the Mona Lisa?", "chat"),
    ("What is 20% of 80?", "math"),
    ("Summarize the document.", "chat"),
    ("How much is 6 times 11?", "math"),
    ("What year did World War 2 end?", "chat"),
    ("What is 2 to the power of 8?", "math"),
    ("Tell me a story about a dragon.", "chat"),
    ("Compute 45 + 67 - 12.", "math"),
    ("What does the document say about the database?", "chat"),
    ("Lisa had 20 sweets and ate 7 of them. How many are left?", "math"),
    ("Name 3 famous scientists.", "chat"),
    ("A bag holds 9 apples. How many apples are in 5 bags?", "math"),
    ("I am 12 years old. What sport should I try?", "chat"),
]

_CHAT_EXAMPLES = [
    ("Tell me about London.", "chat"),
    ("How are you today?", "chat"),
    ("Summarize the document.", "chat"),
    ("What year did World War 2 end?", "chat"),
]


def label_of(tool: Tool, calculator: Tool | None) -> str:
    """The word that stands for `tool` in decisions."""
    if calculator is not None and tool is calculator:
        return CALCULATOR_LABEL
    return tool.name


def decision_messages(tools: Sequence[Tool], calculator: Tool | None, question: str) -> list[Message]:
    """The few-shot classification conversation ending with `question` (to be answered with
    a label)."""
    if len(tools) == 1 and calculator is not None and tools[0] is calculator:
        system, examples = _CALCULATOR_ONLY_SYSTEM, _CALCULATOR_EXAMPLES
    else:
        lines = ["You decide which tool a message needs. Tools:"]
        for tool in tools:
            if calculator is not None and tool is calculator:
                lines.append('- "math": a calculator, for computing a number from numbers in the message')
            else:
                lines.append(f'- "{tool.name}": {tool.description}')
        lines.append(
            'Reply with the tool\'s name in quotes, or "chat" for everything else (greetings, facts, '
            "stories, advice, questions about a document)."
        )
        system = "\n".join(lines)
        examples = _CALCULATOR_EXAMPLES if calculator in tools else _CHAT_EXAMPLES
    messages = [Message.system(system)]
    for user, label in examples:
        messages += [Message.user(user), Message.assistant(label)]
    messages.append(Message.user(question))
    return messages


_EXPRESSION_SYSTEM = (
    "Write the one math expression that answers the question. Use numbers and + - * / ** % ( ), "
    "sqrt(x), cbrt(x), factorial(n), log(x, base)."
)

_EXPRESSION_EXAMPLES = [
    ("What is 37 * 12?", "37 * 12"),
    ("What is nine plus four?", "9 + 4"),
    ("What is the square root of 50?", "sqrt(50)"),
    ("What is 20% of 80?", "20 / 100 * 80"),
    ("Divide 300 by 4.", "300 / 4"),
    ("What is 2 to the power of 8?", "2 ** 8"),
    ("Subtract 8 from 20.", "20 - 8"),
    ("What is the average of 2, 4 and 9?", "(2 + 4 + 9) / 3"),
    ("What is 6 factorial?", "factorial(6)"),
    ("Tom has 4 boxes with 6 eggs in each. How many eggs does he have?", "4 * 6"),
    ("A rope is 30 meters long and I cut off 12. How much is left?", "30 - 12"),
    ("Anna has 14 stickers and gets 9 more. How many does she have now?", "14 + 9"),
    ("48 cookies are shared equally by 6 children. How many does each child get?", "48 / 6"),
]


def expression_messages(question: str) -> list[Message]:
    messages = [Message.system(_EXPRESSION_SYSTEM)]
    for user, expression in _EXPRESSION_EXAMPLES:
        messages += [Message.user(user), Message.assistant(expression)]
    messages.append(Message.user(question))
    return messages


def expression_grammar(numbers: Sequence[str] = ()) -> str:
    """GBNF for one calculator expression: what a Calculator argument can be, never a word
    like "Paris". With `numbers` (those of the question), operands are only those numbers and
    an expression has at most one operator fewer than there are numbers: a small model then
    cannot invent numbers or run on ("7 * 12 / 2 * 2 * 3 * ...")."""
    functions = " | ".join(json.dumps(name) for name in sorted(FUNCTION_NAMES, key=len, reverse=True))
    constants = " | ".join(json.dumps(name) for name in CONSTANT_NAMES)
    op = '("+" | "-" | "*" | "/" | "//" | "%" | "**" | "^")'
    if numbers:
        allowed = sorted(set(numbers), key=lambda n: (-len(n), n))
        extra = max(1, len(allowed) - 1)  # operators after the first operand
        return "\n".join(
            [
                f"root ::= operand (ws {op} ws operand){{0,{extra}}}",
                "operand ::= unary | "
                f'"(" ws unary (ws {op} ws unary){{1,{extra}}} ws ")" | function "(" ws unary ws ")"',
                'unary ::= "-"? (number | constant)',
                "number ::= " + " | ".join(json.dumps(n) for n in allowed),
                f"constant ::= {constants}",
                f"function ::= {functions}",
                'ws ::= " "?',
            ]
        )
    return "\n".join(
        [
            "root ::= expr",
            'expr ::= term (ws ("+" | "-") ws term)*',
            'term ::= power (ws ("*" | "/" | "//" | "%") ws power)*',
            'power ::= unary (ws ("**" | "^") ws unary)*',
            'unary ::= "-"? primary',
            'primary ::= number | constant | function "(" ws expr (ws "," ws expr)* ws ")"'
            ' | "(" ws expr ws ")"',
            'number ::= [0-9]+ ("." [0-9]+)?',
            f"constant ::= {constants}",
            f"function ::= {functions}",
            'ws ::= " "?',
        ]
    )


def argument_messages(tool: Tool, question: str) -> list[Message]:
    """Ask for `tool`'s arguments as JSON (the grammar comes from its parameters' schema)."""
    system = (
        f"Write the JSON arguments for the tool {tool.name}: {tool.description}\n"
        f"Arguments schema: {json.dumps(tool.parameters)}\n"
        "Reply with the JSON object only."
    )
    return [Message.system(system), Message.user(question)]


def tool_result_note(tool: str, arguments: str, observation: str) -> str:
    return f"\n\n(Result of the {tool} tool for {arguments}: {observation}. Use it in your answer.)"
