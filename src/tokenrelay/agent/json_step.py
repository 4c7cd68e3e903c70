"""One model call of the agent on the JSON-action protocol (`json_step`), and its variant for
backends that enforce a JSON schema (`embedded_step`: the action is decided under the grammar,
the final answer written by a plain call, `plain_answer`).

A step is an async generator of events for one model call. It yields `DONE` once the final
answer has been produced; otherwise it has appended to `messages` what the next call needs
(the model's output and the tool's result, or feedback on unusable output).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tokenrelay.agent.final_answer import FinalAnswerExtractor
from tokenrelay.agent.prompts import action_schema, invalid_output_message, tool_response_message
from tokenrelay.agent.prose import ProseStreamer
from tokenrelay.agent.protocol import StreamMode
from tokenrelay.agent.state import DONE, RunState, stream_answer
from tokenrelay.agent.tool_call import call_tool
from tokenrelay.backends.base import FinishChunk, TextChunk, ThinkingChunk
from tokenrelay.events import Event, new_reasoning_delta
from tokenrelay.messages import Message

if TYPE_CHECKING:
    from tokenrelay.agent.loop import Agent

__all__ = ["embedded_step", "json_step", "plain_answer"]

log = logging.getLogger("tokenrelay.agent")


def plain_answer(agent: Agent, state: RunState) -> AsyncGenerator[Event, None]:
    """The final answer written by a plain model call, with what the tools found."""
    messages = list(state.plain)
    if state.steps:
        notes = "\n".join(
            f"- {name}({tool_input}) = {observation}" for name, tool_input, observation in state.steps
        )
        last = messages[-1]
        messages[-1] = Message.user(f"{last.content}\n\n(Results of tools you used:\n{notes})")
    return stream_answer(agent.backend.stream(messages, settings=state.generation), state)


def _unusable(agent: Agent, messages: list[Message], raw: str, problem: str) -> None:
    """Feedback on output that is neither an answer nor a usable action, for the next call."""
    log.log(logging.INFO if agent.verbose else logging.DEBUG, "unusable model output: %s", problem)
    messages += [Message.assistant(raw), Message.user(invalid_output_message(problem))]


async def _act(
    agent: Agent, messages: list[Message], state: RunState, raw: str, action: str, action_input: Any
) -> AsyncGenerator[Event, None]:
    """Run the tool the model asked for; its output and the result go to `messages`."""
    call_id = "call_" + uuid.uuid4().hex[:12]
    async for event in call_tool(agent, call_id, action, action_input, state):
        yield event
    messages += [Message.assistant(raw), Message.user(tool_response_message(state.steps[-1][2]))]


async def embedded_step(
    agent: Agent, messages: list[Message], mode: StreamMode, state: RunState, *, final_only: bool
) -> AsyncGenerator[Event | object, None]:
    """Decide under the grammar (near-greedy, under the agent's own limits: a run's settings
    shape the answer, which the plain call writes); answer with a plain call."""
    extractor = FinalAnswerExtractor()
    if not final_only:  # out of iterations: just answer
        settings = replace(agent.generation, json_schema=action_schema(agent.tools, final_only=False))
        settings = replace(settings, temperature=0.0)
        full = mode == "full"
        async with aclosing(agent.backend.stream(messages, settings=settings)) as chunks:
            async for chunk in chunks:
                if type(chunk) is TextChunk:
                    if full:
                        yield new_reasoning_delta(chunk.text)
                    extractor.feed(chunk.text)
                    if extractor.is_final:
                        break  # decided: stop this call, the plain call writes the answer
                elif isinstance(chunk, FinishChunk):
                    state.call_ended(chunk)
                elif isinstance(chunk, ThinkingChunk) and full:
                    yield new_reasoning_delta(chunk.text)
        if not extractor.is_final:
            extractor.finish()  # (a plain-text final answer is only recognisable at the end)
    answer_now = final_only or extractor.is_final
    if not answer_now and extractor.error is None and extractor.action is not None:
        # a small model repeating a call it already made has its answer: write it
        answer_now = any(s[0] == extractor.action and s[1] == extractor.action_input for s in state.steps)
    if answer_now:
        async with aclosing(plain_answer(agent, state)) as answer:
            async for event in answer:
                yield event
        yield DONE
        return
    if extractor.error is not None or extractor.action is None:
        _unusable(agent, messages, extractor.raw, extractor.error or 'missing "action"')
        return
    async for event in _act(agent, messages, state, extractor.raw, extractor.action, extractor.action_input):
        yield event


async def json_step(
    agent: Agent, messages: list[Message], mode: StreamMode, state: RunState, *, final_only: bool
) -> AsyncGenerator[Event | object, None]:
    """One model call writing a JSON action. The final answer's text streams out of the
    action as it is decoded; with the `stream` policy, prose the model writes instead of (or
    before) an action streams too, and is re-labelled as narration if an action follows."""
    settings = replace(state.generation, json_schema=action_schema(agent.tools, final_only=final_only))
    full = mode == "full"
    streamer = ProseStreamer() if state.policy == "stream" else None
    extractor = None if streamer is not None else FinalAnswerExtractor()
    reason: str | None = None
    async with aclosing(agent.backend.stream(messages, settings=settings)) as chunks:
        async for chunk in chunks:
            if type(chunk) is TextChunk:
                text = chunk.text
                if full:
                    yield new_reasoning_delta(text)
                if extractor is not None:  # the per-token path of a final answer
                    out = extractor.feed(text)
                    if out:
                        yield state.answer_delta(out)
                    continue
                assert streamer is not None
                out = streamer.feed(text)
                if out:
                    yield state.answer_delta(out)
                if streamer.extractor is not None:
                    extractor = streamer.extractor
                    for event in state.narrate():
                        yield event
                    if streamer.action_text:
                        yield state.answer_delta(streamer.action_text)
            elif isinstance(chunk, FinishChunk):
                reason = state.call_ended(chunk)
            elif isinstance(chunk, ThinkingChunk) and full:
                yield new_reasoning_delta(chunk.text)
    if extractor is None:  # the stream policy, and no action block while streaming
        assert streamer is not None
        out = streamer.finish()
        if out:
            yield state.answer_delta(out)
        extractor = streamer.extractor  # a block recognized by the final scan, if any
        if extractor is None:
            if streamer.error is None:  # the prose was the answer
                state.finished(reason)
                yield DONE
                return
            log.log(logging.INFO if agent.verbose else logging.DEBUG, "unusable model output: empty")
            messages += [Message.assistant(""), Message.user(invalid_output_message(streamer.error))]
            return
        for event in state.narrate():
            yield event
        if streamer.action_text:
            yield state.answer_delta(streamer.action_text)
    tail = extractor.finish()
    if tail:
        yield state.answer_delta(tail)
    if extractor.is_final:
        state.finished(reason)
        yield DONE
        return
    raw = streamer.prefix + extractor.raw if streamer is not None else extractor.raw
    if extractor.error is not None or extractor.action is None:
        _unusable(agent, messages, raw, extractor.error or 'missing "action"')
        return
    if final_only:  # the backend ignored the final-only schema: no more tools
        return
    async for event in _act(agent, messages, state, raw, extractor.action, extractor.action_input):
        yield event
