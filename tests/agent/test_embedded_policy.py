"""The embedded policy's logic with a scripted local model (no llama.cpp): what it asks the
model, what it does with the answers, and how it drives the agent's events."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest

from tokenrelay.agent.loop import Agent
from tokenrelay.backends.base import Backend, FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.backends.local import Choice, Completion, LocalModel, SplitPrompt
from tokenrelay.events import AnswerDelta, Event, RunFinished, ToolCallFinished, ToolCallStarted, Usage
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.tools import calculator, tool


@dataclass
class FakeLocal(Backend):
    """A `LocalModel` whose likelihoods and completions are functions of the question."""

    margins: Callable[[str], dict[str, float]] = lambda q: {}
    completion: str = ""
    answer: str = "plain answer"
    english_only: bool = False
    name: str = "fake-local"
    asked: list[tuple[str, Any]] = field(default_factory=list)

    async def render(self, messages: Sequence[Message]) -> str:
        return "".join(f"<{m.role}>{m.content}</{m.role}>" for m in messages) + "<assistant>"

    async def choose(self, prompt: SplitPrompt, options: Sequence[str]) -> Choice:
        question = prompt.rest.split("</user>")[0]
        self.asked.append(("choose", (question, tuple(options))))
        margins = self.margins(question)
        return Choice(logprobs=tuple(margins.get(o, 0.0) for o in options), usage=Usage(prompt_tokens=5))

    async def complete(
        self,
        prompt: SplitPrompt,
        *,
        grammar: str | None = None,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> Completion:
        self.asked.append(("complete", {"grammar": grammar, "json_schema": json_schema}))
        return Completion(text=self.completion, usage=Usage(prompt_tokens=3, completion_tokens=2))

    def stream_text(
        self, prompt: str, *, settings: GenerationSettings = GenerationSettings()
    ) -> AsyncGenerator[ModelChunk, None]:
        self.asked.append(("stream", prompt))
        return self._reply()

    async def _reply(self) -> AsyncGenerator[ModelChunk, None]:
        for word in self.answer.split(" "):
            yield TextChunk(word + " ")
        yield FinishChunk("stop", Usage(prompt_tokens=10, completion_tokens=2))

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        return self._reply()


async def run(agent: Agent, text: str) -> list[Event]:
    async with aclosing(agent.run(text)) as stream:
        events = [e async for e in stream]
    assert isinstance(events[-1], RunFinished), events[-1]
    return events


def kinds(model: FakeLocal) -> list[str]:
    return [k for k, _ in model.asked]


def test_the_fake_is_a_local_model() -> None:
    assert isinstance(FakeLocal(), LocalModel)


@pytest.mark.anyio
async def test_nothing_to_compute_means_no_decision_call() -> None:
    model = FakeLocal()
    events = await run(Agent(model), "Tell me about Paris.")
    assert kinds(model) == ["stream"]
    assert events[-1].answer == "plain answer "  # type: ignore[union-attr]
    assert events[-1].usage == Usage(prompt_tokens=10, completion_tokens=2)  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize(("margin", "tool_called"), [(2.4, False), (2.6, True)])
async def test_the_model_decides_by_margin(margin: float, tool_called: bool) -> None:
    model = FakeLocal(margins=lambda q: {"math": margin, "chat": 0.0}, completion="3 + 5")
    events = await run(Agent(model), "Anna had 3 apples and got 5 more. How many now?")
    assert kinds(model)[0] == "choose"
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    assert bool(started) is tool_called
    if tool_called:
        # the expression is written under a grammar that only admits the question's numbers
        kind, options = model.asked[1]
        assert kind == "complete" and '"3"' in options["grammar"] and '"5"' in options["grammar"]
        assert events[-1].answer == "3 + 5 = 8"  # type: ignore[union-attr]
        assert kinds(model) == ["choose", "complete"]  # the quote needs no answer call
    else:
        assert kinds(model) == ["choose", "stream"]


@pytest.mark.anyio
async def test_a_calculator_error_leaves_the_answer_to_the_model() -> None:
    model = FakeLocal(margins=lambda q: {"math": 9.0}, completion="3 / 0")
    events = await run(Agent(model), "Anna had 3 apples and got 0 more. How many now?")
    finished = next(e for e in events if isinstance(e, ToolCallFinished))
    assert finished.error and "division by zero" in finished.error
    assert kinds(model)[-1] == "stream"
    assert events[-1].answer == "plain answer "  # type: ignore[union-attr]


@tool
def weather(city: str, days: int = 1) -> str:
    """The weather forecast for a city."""
    return f"sunny in {city} for {days} days"


@pytest.mark.anyio
async def test_a_user_tool_gets_json_arguments_from_its_schema_and_the_answer_sees_the_result() -> None:
    model = FakeLocal(
        margins=lambda q: {"weather": 5.0, "chat": 0.0} if "weather" in q else {},
        completion=json.dumps({"city": "Paris", "days": 2}),
        answer="It will be sunny.",
    )
    agent = Agent(model, tools=[calculator, weather])
    events = await run(agent, "What's the weather in Paris?")
    kind, (question, options) = model.asked[0]
    assert kind == "choose" and options == ("weather", "chat")  # no number: not the Calculator
    _, completion = model.asked[1]
    assert completion["json_schema"] == weather.parameters and completion["grammar"] is None
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    assert (started.name, json.loads(started.arguments)) == ("weather", {"city": "Paris", "days": 2})
    finished = next(e for e in events if isinstance(e, ToolCallFinished))
    assert finished.result == "sunny in Paris for 2 days"
    kind, prompt = model.asked[2]
    assert kind == "stream" and "sunny in Paris for 2 days" in prompt
    assert events[-1].answer == "It will be sunny. "  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_english_only_models_answer_other_scripts_without_any_call() -> None:
    model = FakeLocal(english_only=True)
    events = await run(Agent(model), "こんにちは")
    assert model.asked == []
    assert [type(e).__name__ for e in events] == ["RunStarted", "AnswerDelta", "RunFinished"]
    assert isinstance(events[1], AnswerDelta) and "English" in events[1].text


@pytest.mark.anyio
async def test_models_for_every_language_are_asked_anyway() -> None:
    model = FakeLocal(english_only=False, answer="こんにちは！")
    events = await run(Agent(model), "こんにちは")
    assert kinds(model) == ["stream"]
    assert events[-1].answer == "こんにちは！ "  # type: ignore[union-attr]


def test_backends_that_are_not_local_keep_the_json_protocol() -> None:
    from tokenrelay.testing import ScriptedBackend

    assert Agent(ScriptedBackend(["x"]))._embedded is None
    assert Agent(FakeLocal())._embedded is not None
    assert Agent(FakeLocal(), plain_final_answer=False)._embedded is None
