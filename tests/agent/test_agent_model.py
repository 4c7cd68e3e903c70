"""The agent end to end on the real embedded model (SmolLM2-135M through llama.cpp).

The answers of a 135M model are not asserted: what is guaranteed is the structure: every run
ends with one `RunFinished`, the answer deltas add up to it, and the iteration limit with
`generate` still yields an answer. (tests/agent/test_embedded_agent.py checks the embedded agent's
decisions on this model.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from tokenrelay.agent.loop import Agent
from tokenrelay.backends.base import GenerationSettings
from tokenrelay.backends.llamacpp import LlamaCppBackend
from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished, RunStarted, ToolCallFinished

pytestmark = pytest.mark.model

GREEDY = GenerationSettings(max_tokens=48, temperature=0, seed=0)


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend()
    await b.load()
    yield b
    await b.aclose()


async def run_agent(agent: Agent, text: str) -> list[Event]:
    async with aclosing(agent.run(text)) as stream:
        events = [e async for e in stream]
    assert isinstance(events[0], RunStarted)
    terminal = [i for i, e in enumerate(events) if isinstance(e, RunFinished | RunError)]
    assert terminal == [len(events) - 1], events[-1]
    last = events[-1]
    assert isinstance(last, RunFinished), last
    assert last.answer == "".join(e.text for e in events if isinstance(e, AnswerDelta))
    if not any(isinstance(e, ToolCallFinished) for e in events):
        assert last.usage.completion_tokens > 0  # (a quoted Calculator result needs no model call)
    return events


@pytest.mark.anyio
@pytest.mark.parametrize("question", ["what is 2 + 2?", "Hello, how are you?"])
async def test_real_model_run_finishes(backend: LlamaCppBackend, question: str) -> None:
    agent = Agent(backend, generation=GREEDY)
    assert agent.tool_protocol == "json"
    await run_agent(agent, question)


@pytest.mark.anyio
async def test_real_model_iteration_limit_generate(backend: LlamaCppBackend) -> None:
    agent = Agent(backend, generation=GREEDY, max_iterations=1, early_stopping_method="generate")
    # this prompt makes SmolLM2 call the Calculator, so the extra final-only call runs
    events = await run_agent(agent, "Please run the Calculator tool with sqrt(71).")
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert finished.answer.strip()
    # whichever path the model took, a tool call (if any) was answered
    for e in events:
        if isinstance(e, ToolCallFinished):
            assert (e.result is None) != (e.error is None)
