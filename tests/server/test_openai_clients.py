"""`/v1/chat/completions` through the clients people point at it: the `openai` SDK (sync and
async, streamed and not), LangChain's `ChatOpenAI` (invoke and stream) and simonw's `llm` (an
OpenAI-compatible model in its `extra-openai-models.yaml`, run as a subprocess) — each against
a real server over a socket, each getting exact text back.

Also: what the endpoint honours reaches the model (max_tokens, temperature, top_p, stop, seed,
system messages), what it cannot honour is a 400 that names the field (never silently
dropped), `model` names the backend that answered, `finish_reason` is the run's, and reasoning
goes out as `reasoning_content` when asked for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from replies import echo
from server_fixture import LiveServer, make_app
from tokenrelay.agent.prompts import DEFAULT_SYSTEM
from tokenrelay.agent.protocol import AgentBase, RunRequest
from tokenrelay.backends.base import FinishChunk
from tokenrelay.config import Settings
from tokenrelay.events import AnswerDelta, Event, RunFinished, RunStarted
from tokenrelay.messages import Message
from tokenrelay.testing import ScriptedBackend

#: quotes, braces, backslashes, newlines, Japanese, emoji (with a modifier): what framing trips on
TRICKY = 'He said "hi" } {ok} \\ C:\\tmp\\n\nline 2 — 東京は日本の首都です。 🚀👍🏽 done'


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(echo, token_size=3)


@pytest.fixture
def server(tmp_path: Path, backend: ScriptedBackend) -> Iterator[LiveServer]:
    with LiveServer(make_app(tmp_path / "t.db", backend)) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30.0) as sdk:
        yield sdk


# --------------------------------------------------------------------------- the openai SDK


def test_openai_sdk_sync_gets_exact_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="whatever-the-client-says", messages=[{"role": "user", "content": TRICKY}]
    )
    choice = completion.choices[0]
    assert choice.message.content == "You said: " + TRICKY
    assert choice.finish_reason == "stop"
    assert completion.model == "scripted"  # what answered, not the client's string

    stream = client.chat.completions.create(
        model="whatever", messages=[{"role": "user", "content": TRICKY}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: " + TRICKY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {"scripted"}
    assert len(chunks) > 5  # streamed in pieces, not one blob


@pytest.mark.anyio
async def test_openai_sdk_async_gets_exact_text(server: LiveServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": TRICKY}]
        completion = await sdk.chat.completions.create(model="m", messages=messages)
        assert completion.choices[0].message.content == "You said: " + TRICKY
        parts: list[str] = []
        reasons: list[str | None] = []
        stream = await sdk.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                reasons.append(chunk.choices[0].finish_reason)
            else:
                assert chunk.usage is not None and chunk.usage.completion_tokens > 0
        assert "".join(parts) == "You said: " + TRICKY
        assert reasons[-1] == "stop"


def test_generation_parameters_reach_the_model(client: openai.OpenAI, backend: ScriptedBackend) -> None:
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        top_p=0.5,
        stop=["\n\n", "END"],
        seed=42,
    )
    settings = backend.calls[-1].settings
    assert (settings.max_tokens, settings.temperature, settings.top_p) == (5, 0.0, 0.5)
    assert (settings.stop, settings.seed) == (("\n\n", "END"), 42)

    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=9,
        max_completion_tokens=7,
        stop="X",
    )
    settings = backend.calls[-1].settings
    assert (settings.max_tokens, settings.stop) == (7, ("X",))

    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    settings = backend.calls[-1].settings  # nothing asked: the server's settings
    defaults = Settings()
    expected = (defaults.max_tokens, defaults.temperature, (), None)
    assert (settings.max_tokens, settings.temperature, settings.stop, settings.seed) == expected


def test_system_and_developer_messages_extend_the_agents_system_prompt(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    messages: Any = [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Arr, first"},
        {
            "role": "developer",
            "content": [{"type": "text", "text": "Never mention "}, {"type": "text", "text": "gold."}],
        },
        {"role": "user", "content": "second"},
    ]
    completion = client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "You said: second"
    sent = backend.calls[-1].messages
    assert sent[0].role == "system"
    assert sent[0].content.startswith(DEFAULT_SYSTEM)  # the agent's own prompt (tools, format) stays
    assert DEFAULT_SYSTEM + "\n\nAnswer like a pirate.\n\nNever mention gold.\n" in sent[0].content
    assert "RESPONSE FORMAT" in sent[0].content
    assert [(m.role, m.content) for m in sent[1:]] == [
        ("user", "first"),
        ("assistant", "Arr, first"),
        ("user", "second"),
    ]


def test_no_message_is_dropped(client: openai.OpenAI, backend: ScriptedBackend) -> None:
    messages: Any = [
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "A"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "three"},
    ]
    completion = client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "You said: three"
    assert [(m.role, m.content) for m in backend.calls[-1].messages[1:]] == [
        ("user", ""),
        ("assistant", "Hello! How can I help?"),
        ("user", "one\n\ntwo"),
        ("assistant", "A\n\nB"),
        ("user", "three"),
    ]


UNSUPPORTED: list[tuple[dict[str, Any], str, str]] = [
    ({"n": 2}, "n", "one choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "own tools"),
    ({"tool_choice": "required"}, "tool_choice", "own tools"),
    ({"response_format": {"type": "json_object"}}, "response_format", "text"),
    ({"logprobs": True}, "logprobs", "log probabilities"),
    ({"presence_penalty": 0.5}, "presence_penalty", "0"),
    ({"logit_bias": {"42": 10}}, "logit_bias", "only {}"),
    ({"reasoning_effort": "high"}, "reasoning_effort", "not supported"),
    ({"stop": ["a", ""]}, "stop", "empty"),
    ({"messages": [{"role": "tool", "content": "4", "tool_call_id": "c1"}]}, "messages[0].role", "tool"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content[0].type",
        "image_url",
    ),
    ({"messages": [{"role": "user", "content": "hi", "name": "ada"}]}, "messages[0].name", "names"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once upon"}]},
        "messages[1].role",
        "last message",
    ),
]


@pytest.mark.parametrize(("fields", "param", "says"), UNSUPPORTED, ids=[u[1] for u in UNSUPPORTED])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    server: LiveServer, backend: ScriptedBackend, fields: dict[str, Any], param: str, says: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(param + ":") and says in error["message"], error
    assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_parameter"
    assert backend.calls == []


def test_the_sdk_reports_an_unsupported_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n: only one choice"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=3)


def test_neutral_values_of_unsupported_fields_are_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": "late system"}],
        n=1,
        presence_penalty=0,
        frequency_penalty=0.0,
        logprobs=False,
        response_format={"type": "text"},
        tools=[],
        user="someone",
        extra_body={"logit_bias": {}, "parallel_tool_calls": False},
    )
    assert completion.choices[0].message.content == "You said: hi"


def test_reasoning_goes_out_as_reasoning_content_when_asked(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    messages: Any = [{"role": "user", "content": TRICKY}]
    raw = echo([Message.user(TRICKY)])  # the model's raw output: the agent's JSON action

    plain = client.chat.completions.create(model="m", messages=messages)
    assert (plain.choices[0].message.model_extra or {}).get("reasoning_content") is None

    asked = client.chat.completions.create(
        model="m", messages=messages, extra_body={"include_reasoning": True}
    )
    assert asked.choices[0].message.content == "You said: " + TRICKY
    assert (asked.choices[0].message.model_extra or {})["reasoning_content"] == raw

    chunks = list(
        client.chat.completions.create(
            model="m", messages=messages, stream=True, extra_body={"include_reasoning": True}
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "You said: " + TRICKY
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == raw
    # reasoning comes before the answer text it explains
    kinds = [
        "r" if (d.model_extra or {}).get("reasoning_content") else "c"
        for d in deltas
        if d.content or d.model_extra
    ]
    assert kinds.index("r") < kinds.index("c")


class _CutOffAgent(AgentBase):
    """An agent whose run ends cut off by max_tokens (finish_reason 'length')."""

    @property
    def name(self) -> str:
        return "cut-off"

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        yield RunStarted(run_id=request.run_id or "run_x")
        yield AnswerDelta(text="Once upon a")
        yield RunFinished(answer="Once upon a", finish_reason="length")


def test_an_answer_cut_at_max_tokens_finishes_with_length(tmp_path: Path) -> None:
    cut = ['{"action": "Final Answer", "action_input": "Once upon', " a", FinishChunk("length")]
    backend = ScriptedBackend([cut])
    with (
        LiveServer(make_app(tmp_path / "t.db", backend)) as live,
        openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        messages: Any = [{"role": "user", "content": "tell me a story"}]
        completion = sdk.chat.completions.create(model="m", messages=messages, max_tokens=3)
        assert completion.choices[0].finish_reason == "length"
        assert completion.choices[0].message.content == "Once upon a"
        chunks = list(sdk.chat.completions.create(model="m", messages=messages, max_tokens=3, stream=True))
        assert chunks[-1].choices[0].finish_reason == "length"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Once upon a"
    assert backend.calls[-1].settings.max_tokens == 3


def test_finish_reason_is_the_runs(server: LiveServer, client: openai.OpenAI) -> None:
    server.app.state.runner.agent = _CutOffAgent()
    messages: Any = [{"role": "user", "content": "tell me a story"}]
    completion = client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Once upon a"
    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    # an agent that cannot take per-request settings says so instead of ignoring them
    with pytest.raises(openai.BadRequestError, match="does not take generation settings"):
        client.chat.completions.create(model="m", messages=messages, temperature=0)


# --------------------------------------------------------------------------- LangChain


def test_langchain_chat_openai_invoke_and_stream(server: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        model="whatever",
        base_url=server.url + "/v1",
        api_key="x",
        max_retries=0,
        timeout=30,  # type: ignore[arg-type]
    )
    reply = model.invoke(TRICKY)
    assert reply.content == "You said: " + TRICKY
    assert reply.response_metadata["model_name"] == "scripted"
    assert reply.response_metadata["finish_reason"] == "stop"

    pieces = [chunk.content for chunk in model.stream(TRICKY)]
    assert "".join(str(p) for p in pieces) == "You said: " + TRICKY
    assert len([p for p in pieces if p]) > 5

    bound = model.bind(stop=["END"], max_tokens=11, temperature=0.2)
    assert bound.invoke("hi").content == "You said: hi"


@pytest.mark.anyio
async def test_langchain_chat_openai_async(server: LiveServer, backend: ScriptedBackend) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="m", base_url=server.url + "/v1", api_key="x", max_retries=0, temperature=0.1)  # type: ignore[arg-type]
    messages = [SystemMessage("be brief"), HumanMessage(TRICKY)]
    assert (await model.ainvoke(messages)).content == "You said: " + TRICKY
    assert backend.calls[-1].settings.temperature == 0.1
    assert DEFAULT_SYSTEM + "\n\nbe brief\n" in backend.calls[-1].messages[0].content
    pieces = [str(chunk.content) async for chunk in model.astream(messages)]
    assert "".join(pieces) == "You said: " + TRICKY
    await model.root_async_client.close()


# --------------------------------------------------------------------------- simonw's llm


def _llm(server: LiveServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "llm-home"
    home.mkdir(exist_ok=True)
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: tokenrelay\n  model_name: tokenrelay\n  api_base: {server.url}/v1\n"
    )
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": "", "PYTHONIOENCODING": "utf-8"}
    env.pop("OPENAI_API_KEY", None)
    llm = Path(sys.executable).parent / "llm"
    return subprocess.run(
        [str(llm), "--no-log", "-m", "tokenrelay", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )


def test_simonw_llm_streams_and_not(server: LiveServer, backend: ScriptedBackend, tmp_path: Path) -> None:
    done = _llm(server, tmp_path, TRICKY)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "You said: " + TRICKY + "\n"

    done = _llm(
        server,
        tmp_path,
        "--no-stream",
        "-s",
        "Be terse.",
        "-o",
        "temperature",
        "0.3",
        "-o",
        "max_tokens",
        "20",
        TRICKY,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "You said: " + TRICKY + "\n"
    settings = backend.calls[-1].settings
    assert (settings.temperature, settings.max_tokens) == (0.3, 20)
    assert DEFAULT_SYSTEM + "\n\nBe terse.\n" in backend.calls[-1].messages[0].content


def test_simonw_llm_reports_a_refused_option(server: LiveServer, tmp_path: Path) -> None:
    done = _llm(server, tmp_path, "-o", "json_object", "1", "hi")
    assert done.returncode != 0
    assert "response_format: only plain text responses are supported" in done.stderr
