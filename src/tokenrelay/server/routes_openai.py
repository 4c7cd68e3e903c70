"""OpenAI-compatible Chat Completions, so the official SDK and OpenAI-speaking UIs work as is.

The request's last user message is the input; earlier user/assistant pairs are the history
(the endpoint is stateless, like OpenAI's). The final answer is the content; tool steps never
leak into it. A failure mid-stream sends `data: {"error": {...}}` and no `[DONE]`, which the
SDK raises as an APIError.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished
from tokenrelay.server.routes_chat import Owner, _runner, _wait, start_run
from tokenrelay.server.schemas import OpenAIChatRequest, OpenAIMessage
from tokenrelay.server.streaming import FollowResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"])
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _text(message: OpenAIMessage) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [part.get("text", "") for part in content if isinstance(part, dict)]
    if not all(isinstance(text, str) for text in texts):
        raise HTTPException(422, "messages: a content part's text must be a string")
    return "".join(texts)


def _split(messages: list[OpenAIMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The input text and (user, assistant) history pairs from an OpenAI message list."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        raise HTTPException(422, "messages must contain a user message")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for message in messages[:last_user]:
        if message.role == "user":
            pending = _text(message)
        elif message.role == "assistant" and pending is not None:
            history.append((pending, _text(message)))
            pending = None
    return _text(messages[last_user]), history


@router.get("/models", summary="Models (OpenAI-compatible)")
async def models(request: Request, owner: Owner) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": _runner(request).backend.name, "object": "model", "created": 0, "owned_by": "tokenrelay"}
        ],
    }


class _ChunkEncoder:
    """Events → `chat.completion.chunk` SSE lines; the per-token path is one string build."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        head = (
            f'data: {{"id":"{completion_id}","object":"chat.completion.chunk","created":{int(time.time())},'
        )
        self.head = head + f'"model":{_dumps(model)},"choices":[{{"index":0,'
        self.content_head = self.head + '"delta":{"content":'
        self.prologue = (
            self.head + '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        ).encode()

    def __call__(self, events: Sequence[Event], first_id: int) -> bytes:
        text = "".join([e.text for e in events if type(e) is AnswerDelta])
        if not text:
            return b""
        return (self.content_head + _dumps(text) + '},"finish_reason":null}]}\n\n').encode()

    def epilogue(self, last: Event) -> bytes:
        if isinstance(last, RunError):
            error = {"error": {"message": last.message, "type": "server_error", "code": last.code}}
            return f"data: {_dumps(error)}\n\n".encode()
        out = self.head + f'"delta":{{}},"finish_reason":"{_finish(last)}"}}]}}\n\n'
        if self.include_usage and isinstance(last, RunFinished):
            usage = {
                "prompt_tokens": last.usage.prompt_tokens,
                "completion_tokens": last.usage.completion_tokens,
                "total_tokens": last.usage.total_tokens,
            }
            out += (
                self.head.replace('"choices":[{"index":0,', '"choices":[],')
                + f'"usage":{_dumps(usage)}}}\n\n'
            )
        return (out + "data: [DONE]\n\n").encode()


def _finish(last: Event) -> str:
    if isinstance(last, RunFinished) and last.finish_reason == "length":
        return "length"
    return "stop"


@router.post("/chat/completions", summary="Chat Completions (OpenAI-compatible)", response_model=None)
async def chat_completions(request: Request, body: OpenAIChatRequest, owner: Owner) -> Response:
    text, history = _split(body.messages)
    channel, _ = await start_run(
        request, text, owner=owner, session_id=None, history=history, use_session=False, streamed=body.stream
    )
    completion_id = "chatcmpl-" + channel.run_id.removeprefix("run_")
    model = body.model or _runner(request).backend.name
    headers = {"X-Run-Id": channel.run_id}
    if body.stream:
        encoder = _ChunkEncoder(
            completion_id, model, bool(body.stream_options and body.stream_options.include_usage)
        )
        return FollowResponse(
            channel, encoder, media_type="text/event-stream; charset=utf-8", headers=headers,
            prologue=encoder.prologue, epilogue=encoder.epilogue, keepalive=b": keep-alive\n\n",
        )  # fmt: skip
    await _wait(channel, request)
    last = channel.events[-1]
    if isinstance(last, RunError):
        return JSONResponse(
            {"error": {"message": last.message, "type": "server_error", "code": last.code}},
            status_code=502,
            headers=headers,
        )
    assert isinstance(last, RunFinished)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": last.answer},
                    "finish_reason": _finish(last),
                }
            ],
            "usage": {
                "prompt_tokens": last.usage.prompt_tokens,
                "completion_tokens": last.usage.completion_tokens,
                "total_tokens": last.usage.total_tokens,
            },
        },
        headers=headers,
    )
