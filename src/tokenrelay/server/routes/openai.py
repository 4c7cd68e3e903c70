"""OpenAI-compatible Chat Completions, so the official SDK and OpenAI-speaking UIs work as is.

The request becomes one agent run (server/openai_request.py: what is honoured, what is a 400):
the last user message is the input, earlier user/assistant messages the history (the endpoint
is stateless, like OpenAI's), system/developer messages an addition to the agent's system
prompt. The final answer is the content; tool steps never leak into it. With
`include_reasoning`, the agent's reasoning goes out as `reasoning_content` (the vLLM/DeepSeek
convention). `model` names the backend that answered; `finish_reason` is the run's (`length`
when the answer was cut by max_tokens). A failure mid-stream sends `data: {"error": {...}}`
and no `[DONE]`, which the SDK raises as an APIError.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tokenrelay.events import AnswerDelta, Event, ReasoningDelta, RunError, RunFinished
from tokenrelay.runs.buffers import answer_text
from tokenrelay.server.deps import Owner, get_runner, start_run, wait_for_run
from tokenrelay.server.errors import error_body, error_response
from tokenrelay.server.follow import FollowResponse
from tokenrelay.server.lean_route import LeanRoute
from tokenrelay.server.openai_request import Unsupported, run_inputs
from tokenrelay.server.schemas import OpenAIChatRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], route_class=LeanRoute)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@router.get("/models", summary="Models (OpenAI-compatible)")
async def models(request: Request, owner: Owner) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": get_runner(request).model_name,
                "object": "model",
                "created": 0,
                "owned_by": "tokenrelay",
            }
        ],
    }


class _ChunkEncoder:
    """Events → `chat.completion.chunk` SSE lines; the per-token path is one string build."""

    def __init__(self, completion_id: str, model: str, include_usage: bool, include_reasoning: bool) -> None:
        self.include_usage = include_usage
        self.include_reasoning = include_reasoning
        head = (
            f'data: {{"id":"{completion_id}","object":"chat.completion.chunk","created":{int(time.time())},'
        )
        self.head = head + f'"model":{_dumps(model)},"choices":[{{"index":0,'
        self.content_head = self.head + '"delta":{"content":'
        self.reasoning_head = self.head + '"delta":{"reasoning_content":'
        self.prologue = (
            self.head + '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        ).encode()

    def __call__(self, events: Sequence[Event | str], first_id: int) -> bytes:
        """A batch of the run's log (`str` items are answer text: `RunChannel.log`)."""
        if self.include_reasoning:
            return self._with_reasoning(events)
        text = answer_text(events)
        if not text:
            return b""
        return (self.content_head + _dumps(text) + '},"finish_reason":null}]}\n\n').encode()

    def _with_reasoning(self, events: Sequence[Event | str]) -> bytes:
        """Answer and reasoning text in order, one chunk per run of the same kind."""
        out: list[str] = []
        head: str | None = None
        texts: list[str] = []
        for event in events:
            if isinstance(event, str):
                this, text = self.content_head, event
            elif type(event) is AnswerDelta:
                this, text = self.content_head, event.text
            elif type(event) is ReasoningDelta:
                this, text = self.reasoning_head, event.text
            else:
                continue
            if this is not head and texts:
                out.append(f'{head}{_dumps("".join(texts))}}},"finish_reason":null}}]}}\n\n')
                texts = []
            head = this
            texts.append(text)
        if texts:
            out.append(f'{head}{_dumps("".join(texts))}}},"finish_reason":null}}]}}\n\n')
        return "".join(out).encode()

    def epilogue(self, last: Event) -> bytes:
        if isinstance(last, RunError):
            error = error_body(last.message, type_="server_error", code=last.code)
            return f"data: {_dumps(error)}\n\n".encode()
        out = self.head + f'"delta":{{}},"finish_reason":"{_finish(last)}"}}]}}\n\n'
        if self.include_usage and isinstance(last, RunFinished):
            out += (
                self.head.replace('"choices":[{"index":0,', '"choices":[],')
                + f'"usage":{_dumps(_usage(last))}}}\n\n'
            )
        return (out + "data: [DONE]\n\n").encode()


def _usage(last: RunFinished) -> dict[str, int]:
    return {
        "prompt_tokens": last.usage.prompt_tokens,
        "completion_tokens": last.usage.completion_tokens,
        "total_tokens": last.usage.total_tokens,
    }


def _finish(last: Event) -> str:
    """OpenAI's finish_reason for a run: `length` when the answer was cut at max_tokens."""
    if isinstance(last, RunFinished) and last.finish_reason == "length":
        return "length"
    return "stop"


@router.post("/chat/completions", summary="Chat Completions (OpenAI-compatible)", response_model=None)
async def chat_completions(request: Request, body: OpenAIChatRequest, owner: Owner) -> Response:
    runner = get_runner(request)
    try:
        inputs = run_inputs(body, runner.generation)
    except Unsupported as exc:
        return error_response(exc.message, 400, code="unsupported_parameter", param=exc.param)
    except ValueError as exc:
        return error_response(str(exc), 422, code="invalid_request")
    channel, _ = await start_run(
        request,
        inputs.text,
        owner=owner,
        session_id=None,
        history=inputs.history,
        use_session=False,
        streamed=body.stream,
        mode="full" if inputs.include_reasoning else "final",
        generation=inputs.generation,
        system=inputs.system,
    )
    completion_id = "chatcmpl-" + channel.run_id.removeprefix("run_")
    model = runner.model_name  # what answered, whatever name the client used
    headers = {"X-Run-Id": channel.run_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = _ChunkEncoder(completion_id, model, include_usage, inputs.include_reasoning)
        return FollowResponse(
            channel, encoder, media_type="text/event-stream; charset=utf-8", headers=headers,
            prologue=encoder.prologue, epilogue=encoder.epilogue, keepalive=b": keep-alive\n\n",
        )  # fmt: skip
    await wait_for_run(channel, request)
    last = channel.events[-1]
    if isinstance(last, RunError):
        return error_response(last.message, 502, type_="server_error", code=last.code, headers=headers)
    assert isinstance(last, RunFinished)
    message: dict[str, Any] = {"role": "assistant", "content": last.answer}
    if inputs.include_reasoning:
        message["reasoning_content"] = "".join([e.text for e in channel.events if type(e) is ReasoningDelta])
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(last)}],
            "usage": _usage(last),
        },
        headers=headers,
    )
