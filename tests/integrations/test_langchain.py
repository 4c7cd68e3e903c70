"""The LangChain/LangGraph bridge (tokenrelay.integrations.langchain), with LangChain's own fake
chat model (`GenericFakeChatModel`, extended to stream tool calls the way provider models do):

* `LangChainBackend`: text, reasoning blocks, tool calls both ways, usage, errors, closing;
  tokenrelay's agent end to end on it;
* `RunnableAgent`: LangGraph agents (`langchain.agents.create_agent` and hand-built graphs)
  with final-answer-only output (text of a tool-calling message never reaches the answer),
  tool events, answer nodes, `nostream`, models inside tools, errors, cancellation, memory;
* the real HTTP server (uvicorn on a free port): /chat, /chat/events, /v1/chat/completions;
* `TokenrelayCallbackHandler` / `stream_with_callbacks` / `CallbackAgent`: per-request
  handlers, concurrent runs that never mix, sync code in threads, JSON-action final answers;
* the example `examples/langchain_tutorial_agent.py`.

Every event stream is checked against the invariants of `tokenrelay.events`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langgraph")

import httpx
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import MemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from pydantic import Field

from server_fixture import LiveServer
from tokenrelay.agent.loop import Agent
from tokenrelay.backends.base import FinishChunk, TextChunk, ThinkingChunk, ToolCallChunk
from tokenrelay.config import Settings
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
    final_answer,
)
from tokenrelay.integrations.langchain import (
    CallbackAgent,
    LangChainBackend,
    RunnableAgent,
    TokenrelayCallbackHandler,
    backend_from_model_id,
    create_langchain_app,
    stream_with_callbacks,
    to_langchain_messages,
)
from tokenrelay.memory import InMemorySessionStore
from tokenrelay.messages import Message, ToolCall
from tokenrelay.tools import calculator as tr_calculator

ROOT = Path(__file__).resolve().parents[2]


# -- a fake chat model that streams tool calls ---------------------------------------------------

Respond = Callable[[list[BaseMessage]], AIMessage | str]


class FakeToolModel(GenericFakeChatModel):
    """LangChain's `GenericFakeChatModel` (content split on whitespace, as it streams it) plus
    what it lacks: `bind_tools`, and tool calls streamed as `tool_call_chunks` after the text
    (arguments in two pieces), then a usage chunk - the way provider models stream. Replies come
    from `messages` (in order) or from `respond(messages)`. Records every call."""

    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))
    respond: Respond | None = None
    pause_s: float = 0.0
    fail_after: int | None = None
    recorded: list[dict[str, Any]] = Field(default_factory=list)
    finalized: list[bool] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _next_reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        self.recorded.append({"messages": list(messages), "tools": kwargs.get("tools"), "kwargs": kwargs})
        reply = self.respond(messages) if self.respond is not None else next(self.messages)
        return AIMessage(content=reply) if isinstance(reply, str) else reply

    def _chunks(self, reply: AIMessage) -> list[ChatGenerationChunk]:
        chunks = []
        if isinstance(reply.content, str):
            for token in re.split(r"(\s)", reply.content):
                if token:
                    chunks.append(ChatGenerationChunk(message=AIMessageChunk(content=token)))
        else:
            chunks.append(ChatGenerationChunk(message=AIMessageChunk(content=reply.content)))
        for index, call in enumerate(reply.tool_calls):
            args = json.dumps(call["args"])
            half = len(args) // 2
            chunks.append(
                ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        tool_call_chunks=[
                            tool_call_chunk(name=call["name"], args=args[:half], id=call["id"], index=index)
                        ],
                    )
                )
            )
            chunks.append(
                ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="", tool_call_chunks=[tool_call_chunk(args=args[half:], index=index)]
                    )
                )
            )
        usage = {"input_tokens": 7, "output_tokens": len(chunks), "total_tokens": 7 + len(chunks)}
        chunks.append(
            ChatGenerationChunk(
                message=AIMessageChunk(
                    content="", usage_metadata=usage, response_metadata={"finish_reason": "stop"}
                )
            )
        )
        return chunks

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
        reply = self._next_reply(messages, kwargs)
        for i, chunk in enumerate(self._chunks(reply)):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("the fake model exploded\nwith a second line")
            yield chunk

    async def _astream(  # type: ignore[no-untyped-def]
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ):
        reply = self._next_reply(messages, kwargs)
        try:
            for i, chunk in enumerate(self._chunks(reply)):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("the fake model exploded\nwith a second line")
                await asyncio.sleep(self.pause_s)
                yield chunk
        finally:
            self.finalized.append(True)


def calls(*pairs: tuple[str, dict[str, Any]], text: str = "", ids: Sequence[str] = ()) -> AIMessage:
    """An AI message calling tools (name, args), optionally with text before the calls."""
    return AIMessage(
        content=text,
        tool_calls=[
            {"name": name, "args": args, "id": ids[i] if i < len(ids) else f"call_{i}"}
            for i, (name, args) in enumerate(pairs)
        ],
    )


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    from tokenrelay.tools.calculator import calculate

    return calculate(expression)


@tool
def broken(query: str) -> str:
    """A tool that always fails."""
    raise ValueError("the tool broke")


# -- helpers -----------------------------------------------------------------------------------------


def check_stream(events: Sequence[Event]) -> None:
    """The invariants of a well-formed event stream (tokenrelay.events)."""
    assert events, "no events"
    assert isinstance(events[0], RunStarted)
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    terminals = [i for i, e in enumerate(events) if isinstance(e, RunFinished | RunError)]
    assert terminals == [len(events) - 1], events
    answer = final_answer(events)
    last = events[-1]
    assert isinstance(last, RunFinished | RunError)
    assert last.answer == answer
    started = [e.call_id for e in events if isinstance(e, ToolCallStarted)]
    finished = [e.call_id for e in events if isinstance(e, ToolCallFinished)]
    if isinstance(last, RunFinished):
        assert sorted(started) == sorted(finished)
    for i, event in enumerate(events):
        if isinstance(event, ToolCallFinished):
            assert any(isinstance(e, ToolCallStarted) and e.call_id == event.call_id for e in events[:i])


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    events = [event async for event in stream]
    check_stream(events)
    return events


def answer_of(events: Sequence[Event]) -> str:
    """The final answer as a typed consumer shows it (narration re-labelled)."""
    return final_answer(events)


def deltas(events: Sequence[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, AnswerDelta)]


def react_graph(
    model: FakeToolModel,
    tools: Sequence[Any] = (calculator,),
    *,
    handle_tool_errors: bool = False,
    **compile_kw: Any,
) -> Any:
    """A hand-built ReAct graph: agent (model with tools) <-> tools."""
    bound = model.bind_tools(list(tools))

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(list(tools), handle_tool_errors=handle_tool_errors))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile(**compile_kw)


# == LangChainBackend =================================================================================


def test_messages_map_to_langchain_with_tool_calls() -> None:
    out = to_langchain_messages(
        [
            Message.system("be brief"),
            Message.user("2+2?"),
            Message.assistant(
                "let me see",
                (
                    ToolCall(id="c1", name="Calculator", arguments='{"expression": "2+2"}'),
                    ToolCall(id="c2", name="Calculator", arguments="not json"),
                ),
            ),
            Message(role="tool", content="4", tool_call_id="c1"),
            Message.assistant("4"),
        ]
    )
    assert [type(m) for m in out] == [SystemMessage, HumanMessage, AIMessage, ToolMessage, AIMessage]
    ai = out[2]
    assert isinstance(ai, AIMessage)
    assert ai.tool_calls == [
        {"name": "Calculator", "args": {"expression": "2+2"}, "id": "c1", "type": "tool_call"}
    ]
    assert ai.invalid_tool_calls[0]["args"] == "not json" and ai.invalid_tool_calls[0]["id"] == "c2"
    assert isinstance(out[3], ToolMessage) and out[3].tool_call_id == "c1" and out[3].content == "4"


@pytest.mark.anyio
async def test_backend_streams_text_usage_and_finish() -> None:
    model = FakeToolModel(messages=iter(["Hello there, 日本語 🎉!"]))
    backend = LangChainBackend(model)
    chunks = [c async for c in backend.stream([Message.user("hi")])]
    assert "".join(c.text for c in chunks if isinstance(c, TextChunk)) == "Hello there, 日本語 🎉!"
    assert len([c for c in chunks if isinstance(c, TextChunk)]) > 3  # streamed, not one piece
    finish = chunks[-1]
    assert isinstance(finish, FinishChunk) and finish.reason == "stop"
    assert finish.usage is not None and finish.usage.prompt_tokens == 7 and finish.usage.completion_tokens > 0
    assert sum(isinstance(c, FinishChunk) for c in chunks) == 1
    assert backend.supports_native_tools
    assert model.recorded[0]["tools"] is None  # no tools: the model itself, not a bound one


@pytest.mark.anyio
async def test_backend_maps_content_blocks_and_reasoning() -> None:
    class BlockModel(FakeToolModel):
        def _chunks(self, reply: AIMessage) -> list[ChatGenerationChunk]:
            return [
                ChatGenerationChunk(
                    message=AIMessageChunk(content=[{"type": "thinking", "thinking": "hmm", "index": 0}])
                ),
                ChatGenerationChunk(
                    message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": " more"})
                ),
                ChatGenerationChunk(
                    message=AIMessageChunk(content=[{"type": "text", "text": "Hi", "index": 1}])
                ),
                ChatGenerationChunk(
                    message=AIMessageChunk(content=[{"type": "text", "text": " you", "index": 1}]),
                ),
                ChatGenerationChunk(
                    message=AIMessageChunk(content="", response_metadata={"stop_reason": "max_tokens"})
                ),
            ]

    chunks = [c async for c in LangChainBackend(BlockModel(messages=iter(["x"]))).stream([Message.user("q")])]
    assert [c for c in chunks if isinstance(c, ThinkingChunk)] == [
        ThinkingChunk("hmm"),
        ThinkingChunk(" more"),
    ]
    assert [c.text for c in chunks if isinstance(c, TextChunk)] == ["Hi", " you"]
    assert chunks[-1] == FinishChunk("length", None)


@pytest.mark.anyio
async def test_backend_streams_tool_calls_and_binds_tools() -> None:
    model = FakeToolModel(messages=iter([calls(("Calculator", {"expression": "sqrt(71)"}), ids=["abc"])]))
    backend = LangChainBackend(model)
    spec = tr_calculator.spec()
    chunks = [c async for c in backend.stream([Message.user("sqrt 71?")], tools=[spec])]
    pieces = [c for c in chunks if isinstance(c, ToolCallChunk)]
    assert len(pieces) == 2 and {c.index for c in pieces} == {0}
    assert pieces[0].id == "abc" and pieces[0].name == "Calculator"
    assert json.loads("".join(c.arguments for c in pieces)) == {"expression": "sqrt(71)"}
    assert isinstance(chunks[-1], FinishChunk) and chunks[-1].reason == "tool_calls"
    assert model.recorded[0]["tools"] == [spec.to_openai()]


@pytest.mark.anyio
async def test_agent_runs_on_a_langchain_model_with_native_tools() -> None:
    """tokenrelay's own agent end to end on a LangChain model: tool call out, result back in."""
    model = FakeToolModel(
        messages=iter(
            [
                calls(("Calculator", {"expression": "2**10"}), ids=["call_x"]),
                "2 to the 10th is 1024.",
            ]
        )
    )
    agent = Agent(LangChainBackend(model), tools=[tr_calculator])
    assert agent.tool_protocol == "native"
    events = await collect(agent.run("What is 2**10?"))
    assert answer_of(events) == "2 to the 10th is 1024."
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(e.call_id, e.name) for e in started] == [("call_x", "Calculator")]
    assert finished[0].result == "1024"
    second = model.recorded[1]["messages"]
    ai = next(m for m in second if isinstance(m, AIMessage))
    assert ai.tool_calls[0]["id"] == "call_x" and ai.tool_calls[0]["args"] == {"expression": "2**10"}
    result = next(m for m in second if isinstance(m, ToolMessage))
    assert result.tool_call_id == "call_x" and result.content == "1024"
    assert isinstance(events[-1], RunFinished) and events[-1].usage.prompt_tokens == 14


@pytest.mark.anyio
async def test_backend_errors_become_one_line_backend_errors() -> None:
    model = FakeToolModel(messages=iter(["one two three four"]), fail_after=2)
    backend = LangChainBackend(model, name="fake")
    with pytest.raises(BackendError) as info:
        async for _ in backend.stream([Message.user("hi")]):
            pass
    assert str(info.value) == "fake: RuntimeError: the fake model exploded"
    model2 = FakeToolModel(messages=iter(["one two three four"]), fail_after=2)
    events = await collect(Agent(LangChainBackend(model2), tools=[]).run("hi"))
    assert isinstance(events[-1], RunError) and events[-1].code == "backend"


@pytest.mark.anyio
async def test_backend_closes_the_langchain_stream_when_the_consumer_stops() -> None:
    model = FakeToolModel(messages=iter(["a b c d e f g h"]))
    async with aclosing(LangChainBackend(model).stream([Message.user("hi")])) as stream:
        async for chunk in stream:
            assert isinstance(chunk, TextChunk)
            break
    assert model.finalized == [True]


@pytest.mark.anyio
async def test_model_without_bind_tools_falls_back_to_json_actions() -> None:
    model = GenericFakeChatModel(messages=iter(['{"action": "Final Answer", "action_input": "Hi there"}']))
    backend = LangChainBackend(model)
    assert not backend.supports_native_tools
    agent = Agent(backend)
    assert agent.tool_protocol == "json"
    events = await collect(agent.run("hello"))
    assert answer_of(events) == "Hi there"


def test_model_ids_build_backends_or_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    chat_models = pytest.importorskip("langchain.chat_models")
    with pytest.raises(ConfigError, match="langchain:"):
        backend_from_model_id("nonexistent-provider:some-model")
    with pytest.raises(ConfigError, match="model id"):
        backend_from_model_id(" ")
    fake = FakeToolModel()
    monkeypatch.setattr(chat_models, "init_chat_model", lambda model_id: fake)
    backend = backend_from_model_id("openai:gpt-4o-mini")
    assert isinstance(backend, LangChainBackend) and backend.model is fake


def test_pass_settings_is_checked() -> None:
    with pytest.raises(ValueError, match="pass_settings"):
        LangChainBackend(FakeToolModel(), pass_settings=["nonsense"])


# == RunnableAgent ==================================================================================


@pytest.mark.anyio
@pytest.mark.parametrize("builder", ["create_agent", "hand_built"])
@pytest.mark.parametrize("answer_policy", ["stream", "hold"])
async def test_graph_answer_is_only_the_final_message(builder: str, answer_policy: Any) -> None:
    """A tool-calling message's text ("Let me compute.") never reaches the final answer: with
    `stream` it streams and is re-labelled as narration, with `hold` it is never sent; the
    final message's text is the whole answer."""
    model = FakeToolModel(
        messages=iter(
            [
                calls(("calculator", {"expression": "6*7"}), text="Let me compute that.", ids=["call_1"]),
                "The answer is 42.",
            ]
        )
    )
    if builder == "create_agent":
        agents = pytest.importorskip("langchain.agents")
        graph = agents.create_agent(model, [calculator])
    else:
        graph = react_graph(model)
    events = await collect(RunnableAgent(graph).run("What is 6*7?", answer_policy=answer_policy))
    assert answer_of(events) == "The answer is 42."
    narration = [e.text for e in events if isinstance(e, Narration)]
    assert narration == (["Let me compute that.\n\n"] if answer_policy == "stream" else [])
    assert "".join(deltas(events)) == "".join(narration) + "The answer is 42."
    assert not [e for e in events if isinstance(e, ReasoningDelta)]  # final mode
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    assert [(e.call_id, e.name, e.arguments) for e in started] == [
        ("call_1", "calculator", {"expression": "6*7"})
    ]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(e.call_id, e.result, e.error) for e in finished] == [("call_1", "42", None)]
    kinds = [type(e).__name__ for e in events]
    first_answer = (
        len(kinds) - 1 - kinds[::-1].index("Narration") if narration else kinds.index("AnswerDelta")
    )
    assert kinds.index("ToolCallFinished") < kinds.index("AnswerDelta", first_answer)
    last = events[-1]
    assert isinstance(last, RunFinished) and last.usage.prompt_tokens == 14


@pytest.mark.anyio
async def test_full_mode_shows_tool_message_text_as_reasoning() -> None:
    model = FakeToolModel(
        messages=iter(
            [calls(("calculator", {"expression": "1+1"}), text="Thinking aloud.", ids=["c"]), "It is 2."]
        )
    )
    events = await collect(RunnableAgent(react_graph(model)).run("1+1?", mode="full", answer_policy="hold"))
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Thinking aloud."
    assert answer_of(events) == "It is 2."


@pytest.mark.anyio
async def test_answers_stream_token_by_token_where_that_is_exact() -> None:
    """A model call offered no tools streams live; with `eager`, so does a tool-enabled call
    whose message starts with text and makes no tool call."""
    model = FakeToolModel(messages=iter(["one two three four"]))

    async def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    events = await collect(RunnableAgent(graph.compile()).run("go"))
    assert deltas(events) == ["one", " ", "two", " ", "three", " ", "four"]

    eager_model = FakeToolModel(
        messages=iter([calls(("calculator", {"expression": "2+2"}), ids=["c1"]), "it is four"])
    )
    events = await collect(RunnableAgent(react_graph(eager_model), policy="eager").run("2+2?"))
    assert deltas(events) == ["it", " ", "is", " ", "four"]
    streamed = FakeToolModel(
        messages=iter([calls(("calculator", {"expression": "2+2"}), ids=["c1"]), "it is four"])
    )
    events = await collect(RunnableAgent(react_graph(streamed)).run("2+2?"))
    assert deltas(events) == ["it", " ", "is", " ", "four"]  # the default `stream` policy
    held = FakeToolModel(
        messages=iter([calls(("calculator", {"expression": "2+2"}), ids=["c1"]), "it is four"])
    )
    events = await collect(RunnableAgent(react_graph(held), policy="messages").run("2+2?"))
    assert deltas(events) == ["it is four"]  # exact policy: released when the message ends


@pytest.mark.anyio
async def test_answer_nodes_and_nostream_keep_other_models_out() -> None:
    drafts = FakeToolModel(messages=iter(["draft one", "draft two"]))
    final = FakeToolModel(messages=iter(["Final words.", "Final words."]))
    silent = drafts.with_config(tags=["nostream"])

    def build(drafter: Any) -> Any:
        async def draft(state: MessagesState) -> dict[str, Any]:
            reply = await drafter.ainvoke(state["messages"])
            return {"messages": [HumanMessage(content=f"Polish this: {reply.content}")]}

        async def polish(state: MessagesState) -> dict[str, Any]:
            return {"messages": [await final.ainvoke(state["messages"])]}

        graph = StateGraph(MessagesState)
        graph.add_node("draft", draft)
        graph.add_node("polish", polish)
        graph.add_edge(START, "draft")
        graph.add_edge("draft", "polish")
        graph.add_edge("polish", END)
        return graph.compile()

    events = await collect(RunnableAgent(build(drafts), answer_nodes={"polish"}).run("write", mode="full"))
    assert answer_of(events) == "Final words."
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "draft one"
    events = await collect(RunnableAgent(build(silent)).run("write"))
    assert answer_of(events) == "Final words."


@pytest.mark.anyio
async def test_a_model_called_inside_a_tool_is_not_the_answer() -> None:
    inner = FakeToolModel(messages=iter(["inner model text"]))

    @tool
    async def research(topic: str) -> str:
        """Research a topic with another model."""
        reply = await inner.ainvoke(f"research {topic}")
        return str(reply.content)

    outer = FakeToolModel(
        messages=iter([calls(("research", {"topic": "owls"}), ids=["r1"]), "Owls are birds."])
    )
    events = await collect(RunnableAgent(react_graph(outer, tools=[research])).run("owls?", mode="full"))
    assert answer_of(events) == "Owls are birds."
    assert [e.result for e in events if isinstance(e, ToolCallFinished)] == ["inner model text"]
    assert "inner model text" in "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert len(inner.recorded) == 1


@pytest.mark.anyio
async def test_tool_errors_and_model_errors() -> None:
    def script() -> FakeToolModel:
        return FakeToolModel(
            messages=iter([calls(("broken", {"query": "x"}), ids=["b1"]), "Sorry, it broke."])
        )

    # the tool node reports the error to the model, which answers
    events = await collect(RunnableAgent(react_graph(script(), [broken], handle_tool_errors=True)).run("try"))
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert len(finished) == 1 and finished[0].result is None and "the tool broke" in (finished[0].error or "")
    assert answer_of(events) == "Sorry, it broke."
    # the tool's exception ends the graph: a tool error
    events = await collect(RunnableAgent(react_graph(script(), [broken])).run("try"))
    assert [e.error for e in events if isinstance(e, ToolCallFinished)] == ["ValueError: the tool broke"]
    last = events[-1]
    assert isinstance(last, RunError) and last.code == "tool" and last.message == "ValueError: the tool broke"

    failing = FakeToolModel(messages=iter(["partial answer then boom"]), fail_after=3)

    async def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await failing.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    events = await collect(RunnableAgent(graph.compile()).run("go"))
    last = events[-1]
    assert isinstance(last, RunError)
    assert last.code == "backend"
    assert last.message == "RuntimeError: the fake model exploded"
    assert last.answer == "partial answer"  # what streamed before the failure


@pytest.mark.anyio
async def test_eager_policy_trades_exactness_for_streaming(caplog: pytest.LogCaptureFixture) -> None:
    """With `eager`, text written before a tool call streams as answer (the documented risk),
    and the handler says so in the log; `messages` (the default) keeps it out."""

    def script() -> FakeToolModel:
        return FakeToolModel(
            messages=iter([calls(("calculator", {"expression": "1+1"}), text="Hmm.", ids=["c"]), "Two."])
        )

    events = await collect(RunnableAgent(react_graph(script()), policy="eager").run("1+1?"))
    assert answer_of(events) == "Hmm.Two."
    assert "calls tools was streamed as answer" in caplog.text
    events = await collect(RunnableAgent(react_graph(script())).run("1+1?"))
    assert answer_of(events) == "Two."


@pytest.mark.anyio
async def test_consumer_leaving_cancels_the_graph_and_records_the_partial_turn() -> None:
    store = InMemorySessionStore()
    session = (await store.create_session()).id
    model = FakeToolModel(messages=iter(["word " * 200]), pause_s=0.005)
    graph = react_graph(model)
    seen = []
    async with aclosing(
        RunnableAgent(graph, policy="eager", store=store).run("talk", session_id=session)
    ) as stream:
        async for event in stream:
            seen.append(event)
            if len([e for e in seen if isinstance(e, AnswerDelta)]) == 3:
                break
    for _ in range(100):
        if model.finalized:
            break
        await asyncio.sleep(0.01)
    assert model.finalized == [True]
    assert len(model.recorded) == 1
    turns = await store.history(session)
    assert [(t.user_text, t.answer, t.status) for t in turns] == [("talk", "word word", "interrupted")]


def test_the_core_never_imports_langchain() -> None:
    import subprocess

    code = (
        "import sys, tokenrelay, tokenrelay.api, tokenrelay.cli, tokenrelay.server.app;"
        "bad = [m for m in sys.modules if m.startswith(('langchain', 'langgraph'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.anyio
async def test_checkpointer_memory_per_session_and_throwaway_threads() -> None:
    model = FakeToolModel(respond=lambda messages: f"you said {len(messages)} things")
    saver = MemorySaver()
    agent = RunnableAgent(react_graph(model, checkpointer=saver))
    assert agent.memory_k == 0  # the graph keeps its own memory
    first = await collect(agent.run("one", session_id="s1"))
    second = await collect(agent.run("two", session_id="s1"))
    other = await collect(agent.run("three", session_id="s2"))
    assert answer_of(first) == "you said 1 things"
    assert answer_of(second) == "you said 3 things"  # one, its answer, two
    assert answer_of(other) == "you said 1 things"
    stateless = await collect(agent.run("four", history=[("q", "a")]))
    assert answer_of(stateless) == "you said 3 things"
    threads = {c.config["configurable"]["thread_id"] async for c in saver.alist(None)}
    assert threads == {"s1", "s2"}  # the session-less run's thread was deleted


@pytest.mark.anyio
async def test_session_store_records_turns_and_gives_history() -> None:
    store = InMemorySessionStore()
    session = (await store.create_session()).id
    model = FakeToolModel(respond=lambda messages: f"{messages[0].content}+{len(messages)}")
    agent = RunnableAgent(react_graph(model), store=store, memory_k=2)
    for text in ["a", "b", "c", "d"]:
        events = await collect(agent.run(text, session_id=session))
    assert answer_of(events) == "b+5"  # the last 2 turns (b, c), then the new input
    turns = await store.history(session)
    assert [(t.user_text, t.status) for t in turns] == [(x, "complete") for x in "abcd"]
    assert turns[-1].answer == answer_of(events)


def test_bad_options_are_rejected() -> None:
    graph = react_graph(FakeToolModel())
    with pytest.raises(ValueError, match="policy"):
        RunnableAgent(graph, policy="nonsense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_k"):
        RunnableAgent(graph, memory_k=-1)


# == through the real HTTP server ====================================================================


def _sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in body.split("\n\n"):
        kind = data = None
        for line in frame.splitlines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        if kind and data:
            out.append((kind, json.loads(data)))
    return out


def _server_graph() -> Any:
    def respond(messages: list[BaseMessage]) -> AIMessage | str:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return f"The result is {last.content}."
        expression = str(last.content).removeprefix("calc ")
        return calls(("calculator", {"expression": expression}), text="Let me check.", ids=["call_s"])

    return react_graph(FakeToolModel(respond=respond, pause_s=0.001))


def test_graph_served_over_http(tmp_path: Path) -> None:
    settings = Settings(db=f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_langchain_app(_server_graph(), settings, name="calc-graph")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        health = client.get("/health").json()
        assert health["model"] == "calc-graph"

        response = client.post("/chat/events", json={"text": "calc 2**10"})
        assert response.status_code == 200
        events = _sse(response.text)
        kinds = [k for k, _ in events]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        assert "tool_call_started" in kinds and "tool_call_finished" in kinds
        narration = "".join(d["text"] for k, d in events if k == "narration")
        shown = "".join(d["text"] for k, d in events if k == "answer_delta")
        assert shown == narration + "The result is 1024."
        assert events[-1][1]["answer"] == "The result is 1024."
        session = response.headers["X-Session-Id"]

        text = client.post(
            "/chat", json={"text": "calc 3*3", "session_id": session, "answer_policy": "hold"}
        ).text
        assert text == "The result is 9."
        turns = client.get(f"/sessions/{session}").json()["turns"]  # recorded in the server's store
        assert [(t["user_text"], t["answer"], t["status"]) for t in turns] == [
            ("calc 2**10", "The result is 1024.", "complete"),
            ("calc 3*3", "The result is 9.", "complete"),
        ]

        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "x", "stream": True, "messages": [{"role": "user", "content": "calc 6*7"}]},
        ) as stream:
            body = "".join(stream.iter_text())
        narration_shown = narration.replace("1024", "42")
        lines = [line[6:] for line in body.split("\n\n") if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        content = "".join(
            json.loads(line)["choices"][0]["delta"].get("content") or ""
            for line in lines[:-1]
            if json.loads(line)["choices"]
        )
        assert content == narration_shown + "The result is 42."  # OpenAI clients see both, in order

        # what a graph cannot do is a 400 in the server's error shape, before any run starts
        put = client.put(f"/sessions/{session}/document", json={"name": "a.txt", "content": "text"})
        assert put.status_code == 400 and put.json()["error"]["code"] == "unsupported"
        assert (
            "calc-graph" in put.json()["error"]["message"]
            and "no model backend" in put.json()["error"]["message"]
        )
        tuned = client.post(
            "/v1/chat/completions",
            json={"model": "x", "temperature": 0.5, "messages": [{"role": "user", "content": "calc 1+1"}]},
        )
        assert tuned.status_code == 400 and "generation settings" in tuned.json()["error"]["message"]
        info = client.get("/info").json()
        assert info["model"] == "calc-graph" and info["context_window"] is None


def test_chat_model_served_as_backend_over_http(tmp_path: Path) -> None:
    model = FakeToolModel(respond=lambda messages: f"echo: {messages[-1].content}")
    settings = Settings(db=f"sqlite:///{tmp_path / 'db.sqlite'}", tool_protocol="native")
    app = create_langchain_app(model, settings, name="fake-model")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        assert client.get("/health").json()["model"] == "fake-model"
        assert client.post("/chat", json={"text": "hello 日本"}).text == "echo: hello 日本"


def test_callback_agent_served_over_http_keeps_requests_apart(tmp_path: Path) -> None:
    model = FakeToolModel(respond=lambda messages: f"answer for {messages[-1].content} " * 3, pause_s=0.002)

    async def work(text: str, handler: TokenrelayCallbackHandler) -> Any:
        return await model.ainvoke(text, config={"callbacks": [handler]})

    settings = Settings(db=f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_langchain_app(CallbackAgent(work, name="callback-style"), settings)
    with LiveServer(app) as server:
        results: dict[str, str] = {}

        def ask(label: str) -> None:
            with httpx.Client(base_url=server.url, timeout=20) as client:
                results[label] = client.post("/chat", json={"text": label}).text

        threads = [threading.Thread(target=ask, args=(f"q{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {f"q{i}": f"answer for q{i} " * 3 for i in range(6)}


# == the callback handler =============================================================================


@pytest.mark.anyio
async def test_concurrent_callback_runs_never_mix_tokens() -> None:
    model = FakeToolModel(respond=lambda messages: f"{messages[-1].content} " * 20, pause_s=0.001)

    async def run(label: str) -> list[Event]:
        return await collect(
            stream_with_callbacks(lambda h: model.ainvoke(label, config={"callbacks": [h]}), model="fake")
        )

    results = await asyncio.gather(*(run(f"label{i}") for i in range(8)))
    for i, events in enumerate(results):
        assert answer_of(events) == f"label{i} " * 20
        assert len(deltas(events)) == 40  # token by token


@pytest.mark.anyio
async def test_sync_code_in_a_thread_streams_through_the_handler() -> None:
    model = FakeToolModel(messages=iter(["from a worker thread"]))
    seen_threads: set[int] = set()

    def sync_code(handler: TokenrelayCallbackHandler) -> Any:
        seen_threads.add(threading.get_ident())
        return model.invoke("hi", config={"callbacks": [handler]})

    events = await collect(stream_with_callbacks(lambda h: asyncio.to_thread(sync_code, h)))
    assert answer_of(events) == "from a worker thread"
    assert len(deltas(events)) == 7
    assert threading.get_ident() not in seen_threads


@pytest.mark.anyio
async def test_final_only_extracts_the_json_final_answer() -> None:
    """The tutorial's conversational-chat agent writes JSON actions; only the final answer's
    text streams, and a tool's own model call never does."""
    tool_step = '```json\n{"action": "Calculator", "action_input": "2+2"}\n```'
    final = '{"action": "Final Answer", "action_input": "It is \\"4\\" 🎉"}'
    model = FakeToolModel(messages=iter([tool_step, final]))

    async def agent(handler: TokenrelayCallbackHandler) -> str:
        config: Any = {"callbacks": [handler]}
        await model.ainvoke("question", config=config)
        await calculator.ainvoke({"expression": "2+2"}, config=config)
        reply = await model.ainvoke("question + observation", config=config)
        return str(reply.content)

    events = await collect(stream_with_callbacks(agent, final_only=True, mode="full"))
    assert answer_of(events) == 'It is "4" 🎉'
    assert len(deltas(events)) > 1
    raw = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert raw == tool_step + final
    assert [e.name for e in events if isinstance(e, ToolCallStarted)] == ["calculator"]

    plain = FakeToolModel(messages=iter(["the tutorial's tokens, all of them"]))
    events = await collect(
        stream_with_callbacks(lambda h: plain.ainvoke("q", config={"callbacks": [h]}), final_only=False)
    )
    assert answer_of(events) == "the tutorial's tokens, all of them"


@pytest.mark.anyio
async def test_standalone_handler_finishes_with_its_root_run() -> None:
    model = FakeToolModel(messages=iter(["standalone works"]))
    handler = TokenrelayCallbackHandler(run_id="run_fixed", session_id="s")
    handler.bind_loop()
    task = asyncio.create_task(model.ainvoke("x", config={"callbacks": [handler]}))
    events = await collect(handler.events())
    await task
    assert events[0] == RunStarted(run_id="run_fixed", session_id="s", model="langchain")
    assert answer_of(events) == "standalone works"
    with pytest.raises(RuntimeError):
        await anext(handler.events())


@pytest.mark.anyio
async def test_callback_failures_and_bad_factories_end_with_one_error() -> None:
    model = FakeToolModel(messages=iter(["a b c d e"]), fail_after=2)
    events = await collect(stream_with_callbacks(lambda h: model.ainvoke("x", config={"callbacks": [h]})))
    assert isinstance(events[-1], RunError) and events[-1].code == "backend" and events[-1].answer == "a "
    events = await collect(stream_with_callbacks(lambda h: "not awaitable"))  # type: ignore[arg-type,return-value]
    assert isinstance(events[-1], RunError) and "awaitable" in events[-1].message

    async def cancelled(handler: TokenrelayCallbackHandler) -> None:
        raise asyncio.CancelledError

    events = await collect(stream_with_callbacks(cancelled))
    assert isinstance(events[-1], RunError) and events[-1].code == "cancelled"


@pytest.mark.anyio
async def test_non_streaming_models_still_give_an_answer() -> None:
    model = FakeToolModel(messages=iter(["whole reply"]), disable_streaming=True)
    events = await collect(stream_with_callbacks(lambda h: model.ainvoke("x", config={"callbacks": [h]})))
    assert deltas(events) == ["whole reply"]


# == the example ========================================================================================


def _load_example() -> ModuleType:
    path = ROOT / "examples" / "langchain_tutorial_agent.py"
    spec = importlib.util.spec_from_file_location("langchain_tutorial_agent", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load_example()


@pytest.mark.anyio
async def test_example_agent_uses_the_math_tool(example: ModuleType) -> None:
    model = FakeToolModel(
        messages=iter(
            [calls(("Calculator", {"expression": "2**10"}), text="Checking.", ids=["c1"]), "It is 1024."]
        )
    )
    agent = example.tutorial_agent(model)
    events = await collect(agent.run("What is 2**10?", session_id="s"))
    assert answer_of(events) == "It is 1024."
    assert [e.result for e in events if isinstance(e, ToolCallFinished)] == ["1024"]
    assert model.recorded[0]["tools"][0]["function"]["name"] == "Calculator"
    assert isinstance(model.recorded[0]["messages"][0], SystemMessage)


@pytest.mark.anyio
async def test_example_memory_keeps_the_last_five_exchanges(example: ModuleType) -> None:
    model = FakeToolModel(respond=lambda messages: f"answer {messages[-1].content}")
    agent = example.tutorial_agent(model)
    for i in range(7):
        await collect(agent.run(f"q{i}", session_id="mem"))
    seen = model.recorded[-1]["messages"]
    humans = [m.content for m in seen if isinstance(m, HumanMessage)]
    assert humans == ["q1", "q2", "q3", "q4", "q5", "q6"]  # 5 earlier exchanges + the question
    assert [m.content for m in seen if isinstance(m, AIMessage)] == [f"answer q{i}" for i in range(1, 6)]
    other = await collect(agent.run("fresh", session_id="other"))
    assert answer_of(other) == "answer fresh"


@pytest.mark.anyio
async def test_example_stops_after_three_iterations_and_generates(example: ModuleType) -> None:
    def respond(messages: list[BaseMessage]) -> AIMessage | str:
        if "Tool results so far" in str(messages[-1].content):
            return "Best I can say: 3."
        return calls(("Calculator", {"expression": "1+2"}), ids=[f"c{len(messages)}"])

    model = FakeToolModel(respond=respond)
    events = await collect(example.tutorial_agent(model).run("loop forever", session_id="x"))
    assert len([e for e in events if isinstance(e, ToolCallStarted)]) == 3
    assert answer_of(events) == "Best I can say: 3."
    assert deltas(events) == ["Best", " ", "I", " ", "can", " ", "say:", " ", "3."]  # no tools: live
    assert model.recorded[-1]["tools"] is None
    assert len(model.recorded) == 4


def test_example_window_and_demo(example: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    messages = [
        HumanMessage(content="a"),
        calls(("Calculator", {"expression": "1"})),
        ToolMessage(content="1", tool_call_id="call_0"),
        AIMessage(content="A"),
        HumanMessage(content="b"),
        AIMessage(content="B"),
        HumanMessage(content="c"),
    ]
    assert [m.content for m in example.window(messages, 1)] == ["b", "B", "c"]
    assert [m.content for m in example.window(messages, 0)] == ["c"]
    assert example.main(["--ask", "What is 2**10?"]) == 0
    assert "The answer is 1024." in capsys.readouterr().out


def test_example_serves_over_http(example: ModuleType, tmp_path: Path) -> None:
    agent = example.tutorial_agent(example.DemoChatModel(delay_s=0))
    app = create_langchain_app(agent, Settings(db=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        first = client.post("/chat", json={"text": "What is 12*12?"})
        assert first.text == "The answer is 144."
        session = first.headers["X-Session-Id"]
        again = client.post("/chat", json={"text": "And 2+2?", "session_id": session})
        assert again.text == "The answer is 4."
