"""The embedded agent: actions decided by a small local model's own likelihoods, not by
sampling a JSON blob.

Used by `Agent` on backends that implement `LocalModel` (llama.cpp). One run:

1. **Language.** On an English-only model (the tiny default) a question or document in
   another script (Japanese, Chinese, Korean, Cyrillic...) gets a plain notice of how to
   switch models, with no model call.
2. **Candidates.** The Calculator is a candidate only when the question has something to
   compute: two numbers, or one and a math word (`arith.could_compute`); user tools always
   are. No candidate: answer at once.
3. **Decision.** A question that spells its arithmetic out ("1234 * 5678", "twelve times
   seven", "the square root of 71") goes to the Calculator without asking the model (the
   deterministic pre-check, `arith.read_arithmetic`). Otherwise the model scores the labels
   of the candidates and "chat" after a few-shot prompt (`embedded_prompts`), from one
   next-token distribution; a tool wins when its label beats "chat" by `margin` nats.
4. **Arguments.** The pre-check's expression, or the model's, written greedily under a
   grammar: an arithmetic expression for the Calculator, the tool's JSON schema otherwise.
5. **Answer.** Without a tool: the same model call as a plain chat (same prompt, same
   settings). After the Calculator: the result, quoted (`1234 * 5678 = 7006652`) - exact,
   and the first answer token comes before any further model call. After another tool: the
   model writes the answer with the result in the prompt.

The prompts shared by every question (instructions, examples) are evaluated once per model
and reused from their cached state, so a decision costs the evaluation of the question's own
tokens. Tool calls still go through the agent (`ToolCallStarted` / `ToolCallFinished`), and
in `full` mode what the model decided is reported as `ReasoningDelta`.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tokenrelay.agent import embedded_prompts as prompts
from tokenrelay.agent.arith import Arithmetic, could_compute, normalize, read_arithmetic
from tokenrelay.agent.state import stream_answer
from tokenrelay.backends.base import Backend, GenerationSettings, ModelChunk
from tokenrelay.backends.local import LocalModel, SplitPrompt
from tokenrelay.events import Event, ReasoningDelta, ToolCallFinished, Usage
from tokenrelay.messages import Message
from tokenrelay.tools import calculator as builtin_calculator
from tokenrelay.tools.registry import Tool

__all__ = ["Decision", "EmbeddedPolicy", "RunHooks", "embedded_policy", "is_mostly_non_latin"]

log = logging.getLogger("tokenrelay.agent")

#: a tool is chosen when log p(its label) - log p("chat") exceeds this (nats); set on a
#: development set kept apart from the evaluation set (bench/README.md)
DEFAULT_MARGIN = 2.5
_PLACEHOLDER = "\ue000"  # stands for the question while the prompt's shared prefix is found
_EXPRESSION_TOKENS = 48
_ARGUMENT_TOKENS = 160


class RunHooks(Protocol):
    """What the embedded policy needs from the agent's run (kept by `agent/loop.py`)."""

    def answer_delta(self, text: str) -> Event:
        """Record answer text and return its `AnswerDelta`."""
        ...

    @property
    def generation(self) -> GenerationSettings:
        """This run's sampling settings (the agent's, or the run's override)."""
        ...

    def add_usage(self, usage: Usage) -> None: ...

    def finished(self, reason: str | None) -> None:
        """The model call that wrote the answer ended with `reason` ("length": cut short)."""
        ...

    def call_tool(self, name: str, arguments: Any) -> AsyncGenerator[Event, None]:
        """Run a tool through the agent: `ToolCallStarted`, then `ToolCallFinished`."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    """Which tool (None: answer directly), its arguments, and why."""

    tool: Tool | None
    arguments: Any = None
    reason: Literal["no candidate", "explicit arithmetic", "model"] = "model"
    margin: float | None = None


def is_mostly_non_latin(text: str) -> bool:
    """Whether most letters of `text` are outside the Latin script (Japanese, Chinese, ...)."""
    latin = other = 0
    for ch in text:
        if not ch.isalpha():
            continue
        if ord(ch) < 0x250 or unicodedata.name(ch, "").startswith("LATIN"):
            latin += 1
        else:
            other += 1
    return other > latin


class EmbeddedPolicy:
    """Decides and answers for one agent configuration; holds no per-run state."""

    def __init__(
        self,
        model: LocalModel,
        tools: Sequence[Tool],
        *,
        margin: float = DEFAULT_MARGIN,
        precheck: bool = True,
    ) -> None:
        self.model = model
        self.tools = list(tools)
        self.margin = margin
        #: the deterministic pre-check (arith.py) may filter candidates, decide explicit
        #: arithmetic and supply the expression; False leaves all of it to the model
        self.precheck = precheck
        self.calculator = next((t for t in self.tools if t is builtin_calculator), None)
        self._split: dict[str, tuple[str, str] | None] = {}

    # -- the run ----------------------------------------------------------------------

    async def run(
        self,
        conversation: list[Message],
        question: str,
        document: str | None,
        mode: Literal["final", "full"],
        hooks: RunHooks,
        *,
        tool_calls_allowed: bool = True,
        forced_stop: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Answer `question`; `conversation` is the plain chat (system, document, history,
        question) the answer is written from. `forced_stop` (the agent's
        `early_stopping_method="force"` with one iteration) replaces the answer after a tool."""
        if self.model.english_only and (
            is_mostly_non_latin(question) or (document is not None and is_mostly_non_latin(document))
        ):
            from tokenrelay.models import english_only_reply

            yield hooks.answer_delta(english_only_reply())
            return
        decision = (
            await self.decide(question, hooks)
            if tool_calls_allowed
            else Decision(None, reason="no candidate")
        )
        if mode == "full" and decision.reason != "no candidate":
            tool = decision.tool.name if decision.tool else prompts.ANSWER_LABEL
            detail = f" (margin {decision.margin:+.2f})" if decision.margin is not None else ""
            yield ReasoningDelta(text=f"Action: {tool} [{decision.reason}{detail}]\n")
            if decision.tool is not None:
                yield ReasoningDelta(text=f"Action input: {_show(decision.arguments)}\n")
        if decision.tool is None:
            async with aclosing(stream_answer(await self._answer_call(conversation, hooks), hooks)) as events:
                async for event in events:
                    yield event
            return
        finished: ToolCallFinished | None = None
        async with aclosing(hooks.call_tool(decision.tool.name, decision.arguments)) as events:
            async for event in events:
                if isinstance(event, ToolCallFinished):
                    finished = event
                yield event
        if forced_stop is not None:
            yield hooks.answer_delta(forced_stop)
            return
        if finished is not None and finished.error is None and finished.result is not None:
            if decision.tool is self.calculator:
                yield hooks.answer_delta(f"{_show(decision.arguments)} = {finished.result}")
                return
            note = prompts.tool_result_note(decision.tool.name, _show(decision.arguments), finished.result)
            conversation = [*conversation[:-1], Message.user(conversation[-1].content + note)]
        # a failed tool adds nothing the model can use: it answers on its own
        async with aclosing(stream_answer(await self._answer_call(conversation, hooks), hooks)) as events:
            async for event in events:
                yield event

    async def warm(self) -> None:
        """Evaluate the decision prompt's shared prefix now (a server calls this at startup), so
        the first question that needs a decision does not pay for it (~500 tokens; the
        expression prompt, for word problems only, is left to its first use)."""
        candidates = list(self.tools)
        if not candidates:
            return
        labels = [prompts.label_of(t, self.calculator) for t in candidates]
        question = "1 + 1"
        prompt = await self._prompt(
            "decide:" + ",".join(labels),
            lambda q: prompts.decision_messages(candidates, self.calculator, q),
            question,
        )
        await self.model.choose(prompt, ["chat"])

    async def decide(self, question: str, hooks: RunHooks) -> Decision:
        candidates = [
            t for t in self.tools if t is not self.calculator or not self.precheck or could_compute(question)
        ]
        if not candidates:
            return Decision(None, reason="no candidate")
        found = read_arithmetic(question) if self.precheck and self.calculator in candidates else None
        if found is not None and found.explicit:
            return Decision(self.calculator, found.expression, reason="explicit arithmetic")
        labels = [prompts.label_of(t, self.calculator) for t in candidates]
        prompt = await self._prompt(
            "decide:" + ",".join(labels),
            lambda q: prompts.decision_messages(candidates, self.calculator, q),
            question,
        )
        choice = await self.model.choose(prompt, [*labels, prompts.ANSWER_LABEL])
        hooks.add_usage(choice.usage)
        best = max(range(len(labels)), key=choice.logprobs.__getitem__)
        margin = choice.logprobs[best] - choice.logprobs[-1]
        log.debug("embedded decision %r: %s margin %.2f", question[:60], labels[best], margin)
        if margin <= self.margin:
            return Decision(None, reason="model", margin=margin)
        tool = candidates[best]
        arguments = await self._arguments(tool, question, found, hooks)
        return Decision(tool, arguments, reason="model", margin=margin)

    # -- arguments and answers ----------------------------------------------------------

    async def _arguments(self, tool: Tool, question: str, found: Arithmetic | None, hooks: RunHooks) -> Any:
        if tool is self.calculator:
            if found is not None:
                return found.expression
            prompt = await self._prompt("expression", prompts.expression_messages, question)
            numbers = re.findall(r"\d+(?:\.\d+)?", normalize(question))
            done = await self.model.complete(
                prompt, grammar=prompts.expression_grammar(numbers), max_tokens=_EXPRESSION_TOKENS
            )
            hooks.add_usage(done.usage)
            return done.text.strip()
        prompt = await self._prompt(
            f"arguments:{tool.name}", lambda q: prompts.argument_messages(tool, q), question
        )
        done = await self.model.complete(prompt, json_schema=tool.parameters, max_tokens=_ARGUMENT_TOKENS)
        hooks.add_usage(done.usage)
        return done.text.strip()

    async def _answer_call(
        self, conversation: list[Message], hooks: RunHooks
    ) -> AsyncGenerator[ModelChunk, None]:
        """The answer's model call on the plain chat prompt: the same tokens a plain call evaluates."""
        prompt = await self.model.render(conversation)
        return self.model.stream_text(prompt, settings=hooks.generation)

    async def _prompt(self, key: str, build: Callable[[str], list[Message]], question: str) -> SplitPrompt:
        """`build(question)` rendered, split into the part shared by every question (rendered
        once, with a placeholder for the question) and the rest."""
        if key not in self._split:
            prefix, found, suffix = (await self.model.render(build(_PLACEHOLDER))).partition(_PLACEHOLDER)
            self._split[key] = (prefix, suffix) if found and _PLACEHOLDER not in suffix else None
        split = self._split[key]
        if split is None:  # a template that transforms its messages: no shared prefix
            return SplitPrompt(prefix="", rest=await self.model.render(build(question)))
        return SplitPrompt(prefix=split[0], rest=question + split[1])


def _show(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def embedded_policy(backend: Backend, tools: Sequence[Tool]) -> EmbeddedPolicy | None:
    """The policy for `backend` when it is an in-process model, else None."""
    if not isinstance(backend, LocalModel):
        return None
    return EmbeddedPolicy(backend, tools)
