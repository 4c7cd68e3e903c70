"""Callback handlers fed from one run's events: hook order, async hooks, the stdout handler,
and isolation between concurrent runs (the tutorial's shared-callback bug)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from tokenrelay.agent.loop import Agent
from tokenrelay.callbacks import CallbackHandler, StreamingStdOutCallbackHandler, run_callbacks
from tokenrelay.events import (
    AnswerDelta,
    Event,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from tokenrelay.messages import Message
from tokenrelay.run import stream_chat
from tokenrelay.testing import ScriptedBackend

PROMPT = [Message.user("hi")]


class Recorder(CallbackHandler):
    """Records every hook call as a tuple, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_llm_start(self, run_id: str, model: str) -> None:
        self.calls.append(("start", run_id, model))

    def on_llm_new_token(self, token: str) -> None:
        self.calls.append(("token", token))

    def on_reasoning_token(self, token: str) -> None:
        self.calls.append(("reasoning", token))

    def on_tool_start(self, name: str, arguments: Any) -> None:
        self.calls.append(("tool_start", name, arguments))

    def on_tool_end(self, name: str, result: str | None, error: str | None) -> None:
        self.calls.append(("tool_end", name, result, error))

    def on_llm_end(self, answer: str, event: RunFinished) -> None:
        self.calls.append(("end", answer))

    def on_llm_error(self, message: str, event: RunError) -> None:
        self.calls.append(("error", message, event.code, event.answer))

    @property
    def tokens(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "token"]


class AsyncRecorder(CallbackHandler):
    """Async hooks that only record after yielding to the loop: unawaited, they record nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def on_llm_start(self, run_id: str, model: str) -> None:
        await asyncio.sleep(0)
        self.calls.append(("start", model))

    async def on_llm_new_token(self, token: str) -> None:
        await asyncio.sleep(0)
        self.calls.append(("token", token))

    async def on_llm_end(self, answer: str, event: RunFinished) -> None:
        await asyncio.sleep(0)
        self.calls.append(("end", answer))

    async def on_llm_error(self, message: str, event: RunError) -> None:
        await asyncio.sleep(0)
        self.calls.append(("error", message))


class FlushLog(io.StringIO):
    """A text stream that remembers what had been written at every flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        super().flush()
        self.flushed.append(self.getvalue())


async def replay(events: Sequence[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


# --------------------------------------------------------------------- hooks


@pytest.mark.anyio
async def test_new_token_per_delta_in_order_between_start_and_end() -> None:
    backend = ScriptedBackend(replies=["Hello, streaming world!"], token_size=3)
    handler = Recorder()
    terminal = await run_callbacks(stream_chat(backend, PROMPT, run_id="run_x"), [handler])
    assert isinstance(terminal, RunFinished)
    assert handler.calls[0] == ("start", "run_x", "scripted")
    assert handler.calls[-1] == ("end", "Hello, streaming world!")
    assert handler.tokens == ["Hel", "lo,", " st", "rea", "min", "g w", "orl", "d!"]
    assert len(handler.calls) == 2 + len(handler.tokens)


@pytest.mark.anyio
async def test_error_hook_gets_message_code_and_partial_answer() -> None:
    backend = ScriptedBackend(replies=["abcdefgh"], token_size=4, fail_after=1, failure_message="boom")
    handler = Recorder()
    terminal = await run_callbacks(stream_chat(backend, PROMPT), [handler])
    assert isinstance(terminal, RunError)
    assert [c[0] for c in handler.calls] == ["start", "token", "error"]
    assert handler.calls[-1] == ("error", "boom", "backend", "abcd")
    assert not any(c[0] == "end" for c in handler.calls)


@pytest.mark.anyio
async def test_every_event_kind_reaches_its_hook() -> None:
    finished = RunFinished(answer="4")
    events: list[Event] = [
        RunStarted(run_id="r1", model="m"),
        ReasoningDelta(text="thinking"),
        ToolCallStarted(call_id="c1", name="Calculator", arguments="2+2"),
        ToolCallFinished(call_id="c1", name="Calculator", result="4"),
        ToolCallStarted(call_id="c2", name="Nope", arguments={"x": 1}),
        ToolCallFinished(call_id="c2", name="Nope", error="no such tool"),
        AnswerDelta(text="4"),
        finished,
    ]
    handler = Recorder()
    assert await run_callbacks(replay(events), [handler]) is finished
    assert handler.calls == [
        ("start", "r1", "m"),
        ("reasoning", "thinking"),
        ("tool_start", "Calculator", "2+2"),
        ("tool_end", "Calculator", "4", None),
        ("tool_start", "Nope", {"x": 1}),
        ("tool_end", "Nope", None, "no such tool"),
        ("token", "4"),
        ("end", "4"),
    ]


@pytest.mark.anyio
async def test_tool_hooks_from_a_real_agent_run() -> None:
    backend = ScriptedBackend(
        replies=[
            '{"action": "Calculator", "action_input": "2+3"}',
            '{"action": "Final Answer", "action_input": "It is 5."}',
        ]
    )
    handler = Recorder()
    terminal = await run_callbacks(Agent(backend).run("what is 2+3?"), [handler])
    assert isinstance(terminal, RunFinished)
    kinds = [c[0] for c in handler.calls]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert ("tool_start", "Calculator", "2+3") in handler.calls
    assert ("tool_end", "Calculator", "5", None) in handler.calls
    assert kinds.index("tool_end") < kinds.index("token")
    assert "".join(handler.tokens) == "It is 5."


@pytest.mark.anyio
async def test_async_hooks_are_awaited_in_order() -> None:
    backend = ScriptedBackend(replies=["abcdef"], token_size=2)
    handler = AsyncRecorder()
    await run_callbacks(stream_chat(backend, PROMPT), [handler])
    assert handler.calls == [
        ("start", "scripted"),
        ("token", "ab"),
        ("token", "cd"),
        ("token", "ef"),
        ("end", "abcdef"),
    ]

    failing = ScriptedBackend(replies=["abcdef"], token_size=2, fail_after=1, failure_message="down")
    handler = AsyncRecorder()
    await run_callbacks(stream_chat(failing, PROMPT), [handler])
    assert handler.calls == [("start", "scripted"), ("token", "ab"), ("error", "down")]


@pytest.mark.anyio
async def test_every_handler_sees_every_event_and_default_hooks_do_nothing() -> None:
    backend = ScriptedBackend(replies=["xyz"], token_size=1)
    first, second = Recorder(), AsyncRecorder()
    terminal = await run_callbacks(stream_chat(backend, PROMPT), [first, CallbackHandler(), second])
    assert isinstance(terminal, RunFinished)
    assert first.tokens == ["x", "y", "z"]
    assert [c[1] for c in second.calls if c[0] == "token"] == ["x", "y", "z"]


@pytest.mark.anyio
async def test_no_handlers_still_returns_the_terminal_event() -> None:
    terminal = await run_callbacks(stream_chat(ScriptedBackend(replies=["ok"]), PROMPT), [])
    assert isinstance(terminal, RunFinished)
    assert terminal.answer == "ok"


@pytest.mark.anyio
async def test_stream_without_terminal_event_returns_none() -> None:
    assert await run_callbacks(replay([RunStarted(run_id="r"), AnswerDelta(text="a")]), [Recorder()]) is None


# --------------------------------------------------------------------- the stdout handler


@pytest.mark.anyio
async def test_stdout_handler_writes_tokens_then_a_newline_flushing_each() -> None:
    out, err = FlushLog(), io.StringIO()
    backend = ScriptedBackend(replies=["Hello there"], token_size=4)
    await run_callbacks(stream_chat(backend, PROMPT), [StreamingStdOutCallbackHandler(out, errors=err)])
    assert out.getvalue() == "Hello there\n"
    assert err.getvalue() == ""
    # every token was on its way to the terminal before the next was written
    for prefix in ("Hell", "Hello th", "Hello there"):
        assert prefix in out.flushed


@pytest.mark.anyio
async def test_stdout_handler_sends_errors_to_the_error_stream_only() -> None:
    out, err = io.StringIO(), io.StringIO()
    backend = ScriptedBackend(
        replies=["partial answer"], token_size=4, fail_after=2, failure_message="model crashed"
    )
    await run_callbacks(stream_chat(backend, PROMPT), [StreamingStdOutCallbackHandler(out, errors=err)])
    assert out.getvalue() == "partial \n"
    assert "model crashed" not in out.getvalue()
    assert err.getvalue() == "error: model crashed\n"


@pytest.mark.anyio
async def test_stdout_handler_error_before_any_text_writes_nothing_to_the_answer() -> None:
    out, err = io.StringIO(), io.StringIO()
    backend = ScriptedBackend(replies=["x"], fail_after=0, failure_message="unreachable")
    await run_callbacks(stream_chat(backend, PROMPT), [StreamingStdOutCallbackHandler(out, errors=err)])
    assert out.getvalue() == ""
    assert err.getvalue() == "error: unreachable\n"


@pytest.mark.anyio
async def test_stdout_handler_defaults_to_the_current_stdout_and_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = StreamingStdOutCallbackHandler()
    await run_callbacks(
        stream_chat(ScriptedBackend(replies=["日本語の答え"], token_size=2), PROMPT), [handler]
    )
    failing = ScriptedBackend(replies=["x"], fail_after=0, failure_message="oops")
    await run_callbacks(stream_chat(failing, PROMPT), [handler])
    captured = capsys.readouterr()
    assert captured.out == "日本語の答え\n"
    assert captured.err == "error: oops\n"


# --------------------------------------------------------------------- isolation


@pytest.mark.anyio
async def test_concurrent_runs_never_see_each_others_tokens() -> None:
    """One shared backend (like the tutorial's shared LLM), two runs at once, one handler each."""
    backend = ScriptedBackend(
        replies=lambda messages: f"<{messages[-1].content}>" * 5, token_size=2, tokens_per_second=400
    )
    order: list[str] = []

    class Tagged(Recorder):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        def on_llm_new_token(self, token: str) -> None:
            super().on_llm_new_token(token)
            order.append(self.tag)

    alpha, beta = Tagged("alpha"), Tagged("beta")
    out_alpha, out_beta = io.StringIO(), io.StringIO()
    results = await asyncio.gather(
        run_callbacks(
            stream_chat(backend, [Message.user("alpha")]), [alpha, StreamingStdOutCallbackHandler(out_alpha)]
        ),
        run_callbacks(
            stream_chat(backend, [Message.user("beta")]), [beta, StreamingStdOutCallbackHandler(out_beta)]
        ),
    )
    assert [r.answer for r in results if r is not None] == ["<alpha>" * 5, "<beta>" * 5]
    assert "".join(alpha.tokens) == "<alpha>" * 5
    assert "".join(beta.tokens) == "<beta>" * 5
    assert out_alpha.getvalue() == "<alpha>" * 5 + "\n"
    assert out_beta.getvalue() == "<beta>" * 5 + "\n"
    # the runs really were interleaved: the test would prove nothing if they ran one after the other
    first_beta = order.index("beta")
    assert "alpha" in order[first_beta:]
