"""Scoring and constrained completion on a loaded llama.cpp model (the `LocalModel` calls).

Runs on the model's worker thread only (a `Llama` is not thread-safe). Invariants:

* a prompt's shared prefix is evaluated once per model: the KV cache after it is kept as a
  sequence state (`llama_state_seq_get_data`, ~23 KB per token for SmolLM2-135M) and copied
  back in well under a millisecond, so a call evaluates only the prompt's `rest`;
* after every call the `Llama` bookkeeping (`input_ids`, `n_tokens`) matches its KV cache, so
  the next generation's own prefix matching stays correct;
* scoring reads the next-token logits of one forward pass; it evaluates more tokens only
  where two options share their first tokens.
"""

from __future__ import annotations

import ctypes
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenrelay.backends.local import Choice, Completion, SplitPrompt
from tokenrelay.errors import BackendError
from tokenrelay.events import Usage

__all__ = ["PromptStates", "choose", "complete"]

_MAX_STATES = 8


@dataclass
class _State:
    tokens: list[int]
    data: Any  # ctypes uint8 array
    size: int


class PromptStates:
    """KV cache snapshots after shared prompt prefixes, least recently used dropped first."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._grammars: dict[str, Any] = {}

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def start(self, prefix: str) -> int:
        """Put the KV cache in the state right after `prefix`; the number of prompt tokens
        evaluated for it (0 when a snapshot was reused)."""
        import llama_cpp

        llama = self.llama
        ctx = llama._ctx.ctx
        state = self._states.get(prefix)
        if state is not None:
            self._states.move_to_end(prefix)
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            if llama_cpp.llama_state_seq_set_data(ctx, state.data, state.size, 0) != state.size:
                raise BackendError("llama.cpp could not restore a cached prompt state")
            n = len(state.tokens)
            llama.input_ids[:n] = state.tokens
            llama.n_tokens = n
            llama._requires_eval = True
            return 0
        tokens = self.tokenize(prefix)
        llama.reset()
        if tokens:
            llama.eval(tokens)
            size = llama_cpp.llama_state_seq_get_size(ctx, 0)
            data = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(ctx, data, size, 0)
            self._states[prefix] = _State(tokens, data, written)
            while len(self._states) > _MAX_STATES:
                self._states.popitem(last=False)
        return len(tokens)

    def grammar(self, text: str) -> Any:
        grammar = self._grammars.get(text)
        if grammar is None:
            from llama_cpp.llama_grammar import LlamaGrammar

            try:
                grammar = LlamaGrammar.from_string(text, verbose=False)
            except ValueError as exc:
                raise BackendError(f"invalid grammar: {exc}") from None
            self._grammars[text] = grammar
        return grammar


def _check_room(llama: Any, extra: int) -> None:
    if llama.n_tokens + extra >= llama.n_ctx():
        raise BackendError(
            f"the prompt is {llama.n_tokens + extra} tokens, which does not fit the model's context "
            f"of {llama.n_ctx()}"
        )


def _log_softmax_at(logits: Any, tokens: Sequence[int]) -> list[float]:
    import numpy as np

    top = float(np.max(logits))
    log_z = top + math.log(float(np.sum(np.exp(logits - top))))
    return [float(logits[t]) - log_z for t in tokens]


def _logits(llama: Any) -> Any:
    import numpy as np

    return np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),))


def choose(states: PromptStates, prompt: SplitPrompt, options: Sequence[str]) -> Choice:
    """Log-probabilities of `options` continuing `prompt` (see `Choice`)."""
    if not options:
        raise ValueError("choose() needs at least one option")
    llama = states.llama
    evaluated = states.start(prompt.prefix)
    rest = states.tokenize(prompt.rest)
    if not rest:  # the logits after a restored state are not kept: re-evaluate the last token
        rest = [int(llama.input_ids[llama.n_tokens - 1])]
        llama.n_tokens -= 1
    _check_room(llama, len(rest) + 8)
    llama.eval(rest)
    evaluated += len(rest)
    seqs = [states.tokenize(o) or [llama.token_eos()] for o in options]
    scores = [0.0] * len(options)
    base = llama.n_tokens

    def walk(group: list[int], depth: int, logits: Any) -> None:
        nonlocal evaluated
        by_token: dict[int, list[int]] = {}
        for i in group:
            if depth < len(seqs[i]):
                by_token.setdefault(seqs[i][depth], []).append(i)
        tokens = list(by_token)
        for token, logprob in zip(tokens, _log_softmax_at(logits, tokens), strict=True):
            members = by_token[token]
            for i in members:
                scores[i] += logprob
            if len(members) > 1:  # shared so far: look one token further for these
                llama.n_tokens = base + depth
                llama.eval([token])
                evaluated += 1
                walk(members, depth + 1, _logits(llama).copy())

    walk(list(range(len(options))), 0, _logits(llama).copy())
    llama.n_tokens = base
    return Choice(logprobs=tuple(scores), usage=Usage(prompt_tokens=evaluated, completion_tokens=0))


def complete(
    states: PromptStates, prompt: SplitPrompt, *, grammar: str | None, max_tokens: int, is_end: Any
) -> Completion:
    """Greedy continuation of `prompt` under `grammar`, until `is_end(token)` or `max_tokens`."""
    import codecs

    llama = states.llama
    evaluated = states.start(prompt.prefix)
    start = llama.n_tokens
    tokens = [int(t) for t in llama.input_ids[:start]] + states.tokenize(prompt.rest)
    _check_room(llama, len(tokens) - start + max_tokens)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parts: list[str] = []
    generated = 0
    generator = llama.generate(
        tokens,
        temp=0.0,
        top_k=40,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        grammar=states.grammar(grammar) if grammar else None,
    )
    try:
        for token in generator:
            if is_end(token):
                break
            generated += 1
            parts.append(decoder.decode(llama.detokenize([token])))
            if generated >= max_tokens:
                break
    finally:
        generator.close()
    parts.append(decoder.decode(b"", final=True))
    evaluated += len(tokens) - start
    return Completion(text="".join(parts), usage=Usage(prompt_tokens=evaluated, completion_tokens=generated))
