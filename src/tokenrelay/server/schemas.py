"""Request and response bodies of the HTTP API (they make the OpenAPI description)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "DocumentInfo",
    "HistoryMessage",
    "OpenAIChatRequest",
    "OpenAIMessage",
    "SessionDetail",
    "SessionSummary",
    "TitleIn",
]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="what the user says")
    session_id: str | None = Field(
        default=None, max_length=100, pattern=r"^[A-Za-z0-9_\-]+$", description="continue this session"
    )
    stream: bool = Field(default=True, description="stream the answer (false: one JSON response)")
    mode: Literal["final", "full"] = Field(default="final", description="final answer only, or everything")
    answer_policy: Literal["stream", "hold"] | None = Field(
        default=None,
        description="stream: answer text as the model writes it (text that turns out to precede a tool call "
        "is re-labelled by a `narration` event); hold: only final-answer text, at the cost of latency. "
        "Default: the server's setting (stream)",
    )
    resumable: bool = Field(
        default=False,
        description="keep the run going when the connection drops (resume with GET /runs/{run_id}/events "
        "and Last-Event-ID) for the server's resume grace period (30 s by default), then cancel it; "
        "otherwise a disconnect cancels the run at once",
    )


class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class ChatResponse(BaseModel):
    input: str
    chat_history: list[HistoryMessage]
    output: str
    session_id: str
    run_id: str
    status: str = "complete"
    finish_reason: str = Field(default="stop", description='"stop", or "length" when the answer was cut off')


class TurnOut(BaseModel):
    run_id: str
    user_text: str
    answer: str
    status: str
    error: str | None
    created_at: float
    finished_at: float | None
    finish_reason: str | None = Field(
        default=None, description='"stop", or "length" when the answer was cut off at the token limit'
    )
    steps: list[dict[str, Any]] = Field(
        default_factory=list,
        description='narration ({"type": "narration", "text"}) and tool calls ({"type": "tool", "call_id", '
        '"name", "arguments", "result", "error"}), in order',
    )


class SessionSummary(BaseModel):
    id: str
    title: str
    created_at: float
    updated_at: float


class TitleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200, description="the session's new title (not blank)")


class DocumentInfo(BaseModel):
    name: str
    total_chars: int
    kept_chars: int
    truncated: bool
    notice: str | None = Field(description="what was left out to fit the context window, in words")


class SessionDetail(SessionSummary):
    turns: list[TurnOut]
    document: str | None = Field(default=None, description="name of the attached document, if any")
    document_info: DocumentInfo | None = Field(
        default=None, description="the attached document's size and what was left out to fit the model"
    )
    active_run_id: str | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class OpenAIStreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIChatRequest(BaseModel):
    """What `/v1/chat/completions` honours (server/openai_request.py); any other field is
    refused with a 400 naming it, unless it has its neutral value (`n: 1`, `tools: []`...)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(default="tokenrelay", description="accepted; the server answers with its own model")
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="per model call of the run")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="wins over max_tokens")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, description="only 1 is supported")
    include_reasoning: bool = Field(
        default=False,
        description="stream the agent's reasoning (raw model output, thinking) as delta.reasoning_content",
    )
    user: str | None = Field(default=None, description="accepted; not stored")
