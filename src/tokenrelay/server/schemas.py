"""Request and response bodies of the HTTP API (they make the OpenAPI description)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "HistoryMessage",
    "OpenAIChatRequest",
    "OpenAIMessage",
    "SessionDetail",
    "SessionSummary",
]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="what the user says")
    session_id: str | None = Field(
        default=None, max_length=100, pattern=r"^[A-Za-z0-9_\-]+$", description="continue this session"
    )
    stream: bool = Field(default=True, description="stream the answer (false: one JSON response)")
    mode: Literal["final", "full"] = Field(default="final", description="final answer only, or everything")
    resumable: bool = Field(
        default=False,
        description="keep the run going when the connection drops (resume with GET /runs/{run_id}/events "
        "and Last-Event-ID); otherwise a disconnect cancels the run",
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


class TurnOut(BaseModel):
    run_id: str
    user_text: str
    answer: str
    status: str
    error: str | None
    created_at: float
    finished_at: float | None


class SessionSummary(BaseModel):
    id: str
    title: str
    created_at: float
    updated_at: float


class SessionDetail(SessionSummary):
    turns: list[TurnOut]
    document: str | None = Field(default=None, description="name of the attached document, if any")
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
