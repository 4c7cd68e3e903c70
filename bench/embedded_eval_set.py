"""The embedded agent's evaluation set: English questions with the expected action and, for
maths, the expected number (bench/bench_embedded.py scores them; bench/README.md has the figures).

None of these questions is among the agent's few-shot examples (agent/embedded_prompts.py);
the decision margin was set on a separate development set (`DEV_*` below), not on these.
"""

from __future__ import annotations

from dataclasses import dataclass

CALCULATOR = "Calculator"


@dataclass(frozen=True)
class Item:
    category: str
    question: str
    tool: str | None = None  # the expected tool; None: answer directly
    value: float | None = None  # the expected number in the answer (maths)
    document: bool = False  # asked with DOCUMENT attached
    fact: str | None = None  # a string the answer should contain (document facts; reported only)


def _maths(category: str, rows: list[tuple[str, float]]) -> list[Item]:
    return [Item(category, q, tool=CALCULATOR, value=v) for q, v in rows]


ITEMS: list[Item] = [
    *_maths(
        "arithmetic, symbols",
        [
            ("What is 1234 * 5678?", 7006652),
            ("What is 17 + 25?", 42),
            ("Compute 144 / 12.", 12),
            ("What's 999 - 123?", 876),
            ("Calculate (3 + 4) * 5", 35),
            ("what is 2^10?", 1024),
            ("How much is 45.5 * 2?", 91),
            ("What is 7 * 8 + 3?", 59),
            ("what is 100 / 8", 12.5),
            ("12.5 * 4 = ?", 50),
            ("What does 81 / 9 - 2 equal?", 7),
            ("What is 3 ** 4?", 81),
        ],
    ),
    *_maths(
        "arithmetic, words",
        [
            ("What is twelve times seven?", 84),
            ("What is 15 times 23?", 345),
            ("What is 250 divided by 5?", 50),
            ("What is 19 plus 23?", 42),
            ("What is 1000 minus 1?", 999),
            ("Multiply 6 by 7.", 42),
            ("Add 128 and 256.", 384),
            ("Subtract 45 from 100.", 55),
            ("Divide 81 by 3.", 27),
            ("What do you get if you multiply 11 by 11?", 121),
            ("What is the product of 13 and 17?", 221),
            ("What is the sum of 45, 55 and 100?", 200),
            ("What is three hundred plus forty?", 340),
            ("What is 7 times 6 times 5?", 210),
        ],
    ),
    *_maths(
        "maths, unit-free",
        [
            ("What is the square root of 71?", 8.42614977317636),
            ("what is the square root of 144?", 12),
            ("What is 2 to the power of 16?", 65536),
            ("What is 5 squared?", 25),
            ("What is 3 cubed?", 27),
            ("What is 15% of 200?", 30),
            ("What is the factorial of 6?", 720),
            ("What is the remainder when 17 is divided by 5?", 2),
            ("What is half of 250?", 125),
            ("What is the cube root of 27?", 3),
            ("What is the average of 4, 8 and 12?", 8),
            ("What is log base 2 of 1024?", 10),
        ],
    ),
    *_maths(
        "maths, word problems",
        [
            ("If I have 3 apples and buy 5 more, how many apples do I have?", 8),
            ("A box holds 12 pencils. How many pencils are in 7 boxes?", 84),
            ("Sam had 50 dollars and spent 18. How much money is left?", 32),
            ("There are 36 students split into 4 equal teams. How many students are in each team?", 9),
            ("A train travels 60 miles every hour for 3 hours. How far does it go?", 180),
            ("I read 25 pages a day. How many pages do I read in 8 days?", 200),
        ],
    ),
    *[
        Item("chit-chat", q)
        for q in [
            "Tell me about Paris.",
            "Hello, how are you?",
            "What is your name?",
            "Write a haiku about autumn.",
            "Who wrote Romeo and Juliet?",
            "What is the capital of Japan?",
            "Can you recommend a good book?",
            "Thanks for your help!",
            "What is photosynthesis?",
            "Tell me a joke.",
            "Explain what a calculator is.",
            "How do I make a cup of tea?",
        ]
    ],
    *[
        Item("chit-chat with numbers", q)
        for q in [
            "I have 2 cats. What names would you suggest for them?",
            "What happened in 1969?",
            "Give me 3 tips for better sleep.",
            "Why is 7 considered a lucky number?",
            "Who was the 16th president of the United States?",
            "Tell me about the year 2000.",
            "Name 5 animals that live in the ocean.",
            "What was life like in the 1800s?",
            "I have 2 cats and 3 dogs. What names would you suggest for them?",
            "What happened in Europe between 1939 and 1945?",
            "Give me 3 tips for the 2 weeks before an exam.",
            "My flight leaves at 7 and lands at 11. What should I pack?",
        ]
    ],
    Item("document", "Summarize this document.", document=True),
    Item("document", "What is the system structure described in this document?", document=True),
    Item("document", "Show the processing flow as a Mermaid flowchart.", document=True),
    Item("document", "Draw the processing flow as a Mermaid sequence diagram.", document=True),
    Item("document", "What port does the server listen on?", document=True, fact="8080"),
    Item(
        "document",
        "According to the document, which database stores the turns?",
        document=True,
        fact="PostgreSQL",
    ),
    Item("document", "What is step 2 of the processing flow?", document=True, fact="valid"),
    Item("document", "How many workers does the document recommend?", document=True, fact="4"),
]

#: asked of the tiny default: the agent should say it is English-only (no model call)
JAPANESE: list[Item] = [
    Item("Japanese", "1234 × 5678 は？"),
    Item("Japanese", "こんにちは、元気ですか？"),
    Item("Japanese", "このドキュメントを要約してください。", document=True),
    Item("Japanese", "処理フローをmermaidのフローチャートで示してください。", document=True),
]

DOCUMENT = """# Order relay: design notes

The order relay receives orders from the web shop and forwards them to the warehouse.

## System structure

- A FastAPI web server that listens on port 8080.
- A pool of 4 workers that process orders in the background.
- A PostgreSQL database that stores every order and every turn of the conversation with the client.
- A Redis queue between the web server and the workers.

## Processing flow

1. The web server receives an order as JSON.
2. The order is validated: missing fields are reported to the client.
3. A valid order is put on the Redis queue.
4. A worker takes the order, reserves the items and writes the result to PostgreSQL.
5. The client is told the result by email.

## Operations

Run 4 workers per server. Back up the database every night.
"""

#: the development set the decision margin was chosen on (kept apart from ITEMS)
DEV_MATHS = [
    "What is 48 * 12?", "what's 7 plus 9", "How much is 300 divided by 6?", "Calculate 15 - 7",
    "What is 81 / 3?", "What is eight times nine?", "What is the square root of 200?",
    "What is 3 to the power of 5?", "What is 40% of 90?", "Compute 2 + 2 * 3", "What is 1000 * 0.25?",
    "sum of 12, 13 and 14?", "What is 6 cubed?", "What is 99 minus 33?", "How much is 14 times 3?",
    "What is 5 factorial?", "Add 17 and 38.", "What is 7 squared?", "What is 250 + 750?", "what is 9^3",
    "Find the remainder of 29 divided by 4.", "Multiply 25 by 4.", "What is a third of 90?",
    "What's 12.5 times 8?", "Ben has 15 marbles and gives away 6. How many marbles does he have left?",
    "A car has 4 wheels. How many wheels do 9 cars have?",
    "Mia saves 5 euros a week. How much does she save in 10 weeks?",
    "20 oranges are packed 5 to a bag. How many bags are needed?",
    "A shop sold 120 cups on Monday and 85 on Tuesday. How many cups did it sell in total?",
    "A ribbon is 90 cm long. If I cut it into 3 equal pieces, how long is each piece?",
]  # fmt: skip
DEV_CHAT = [
    "Hi!", "What is the weather like on Mars?", "Tell me about Rome.", "Who invented the telephone?",
    "Write a short poem about the sea.", "What is your favourite colour?", "Good morning!",
    "What is gravity?",
    "How do I cook rice?", "I am 30 years old. What hobby should I try?", "What happened in 1492?",
    "Name 3 famous painters.", "What is the plot of Hamlet?", "Explain the document in simple words.",
    "What does the document say about security?", "List the components in the document.",
    "Who won the World Cup in 2018?", "Is 13 an unlucky number?", "Give me 2 reasons to learn Python.",
    "What is chapter 4 of the document about?", "Can you help me write an email?",
    "What is the best way to learn math?", "Tell me about Apollo 11.", "Thank you!",
    "I have 2 sisters and 1 brother. What games can we play together?",
    "Tell me about the years 1914 to 1918.",
    "My 2 kids are 5 and 8 years old. What movie should we watch?", "Recommend 3 books from the 1990s.",
    "I sleep 6 hours and work 10 hours a day. Any advice?", "Compare the iPhone 14 and the iPhone 15.",
]  # fmt: skip
