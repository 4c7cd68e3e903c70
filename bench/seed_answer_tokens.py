"""How long are the answers people ask for? The seed's example outputs, in tokens.

The default `max_tokens` must fit a Japanese answer with a Mermaid diagram (the seed's presets:
要約, システム構成, 処理フローをmermaidで, シーケンス図, and the follow-ups). This prints each
example output of the seed's Q&A in characters, UTF-8 bytes and tokens of the embedded model's
tokenizer (SmolLM2: byte-level BPE trained on English, the worst case for Japanese; tokenizers
trained on Japanese, such as Qwen2.5's, need roughly one token per 1-1.4 characters).

    python bench/seed_answer_tokens.py [path/to/seed.txt]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tokenrelay.backends.llamacpp import default_model_path
from tokenrelay.config import Settings

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_0f35b07195734c18.txt"


def main() -> None:
    from llama_cpp import Llama

    seed = Path(sys.argv[1]) if len(sys.argv) > 1 else SEED
    text = seed.read_text(encoding="utf-8")
    model = Llama(str(default_model_path()), n_ctx=256, vocab_only=True, verbose=False)
    longest = 0
    print(f"{'question':<18} {'chars':>6} {'bytes':>6} {'SmolLM2 tokens':>15}")
    for part in re.split(r"\n(?=事前質問例\d|質問例|追加質問例\d)", text):
        if "アウトプット例" not in part:
            continue
        question = part.split("\n", 2)[1] if part.count("\n") > 1 else part
        answer = part.split("アウトプット例", 1)[1].strip()
        tokens = len(model.tokenize(answer.encode("utf-8"), add_bos=False))
        longest = max(longest, tokens)
        print(f"{question[:16]:<18} {len(answer):>6} {len(answer.encode()):>6} {tokens:>15}")
    default = Settings().max_tokens
    ratio = default / longest
    print(f"\nlongest: {longest} tokens; default max_tokens: {default} ({ratio:.2f}x the longest)")


if __name__ == "__main__":
    main()
