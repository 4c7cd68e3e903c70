"""Any LangChain chat model as a tokenrelay backend.

`LangChainBackend(model)` wraps a `BaseChatModel` (ChatOpenAI, ChatAnthropic, ChatOllama, ...,
or a fake model in tests) so tokenrelay's agent, server and page run on it. Mapping:

* our messages -> LangChain messages: system/user/assistant/tool become `SystemMessage`,
  `HumanMessage`, `AIMessage` (with `tool_calls`; arguments that are not a JSON object become
  `invalid_tool_calls`, verbatim) and `ToolMessage` (with `tool_call_id`);
* our tool specs -> `model.bind_tools([spec.to_openai(), ...])` (bound models are cached per
  tool set); a model whose class does not implement `bind_tools` reports
  `supports_native_tools = False`, so the agent uses the JSON action protocol instead;
* the model's `astream` chunks -> `TextChunk` (string content, or the text of content blocks),
  `ThinkingChunk` (thinking/reasoning blocks, `reasoning_content`), `ToolCallChunk` (from
  `tool_call_chunks`: index/id/name/args pieces, or whole `tool_calls` when the model does not
  stream), and one `FinishChunk` at the end with the usage summed over `usage_metadata`
  (LangChain reports usage additively across chunks) and the finish reason
  (`tool_calls`, `length`, or `stop`);
* generation settings: only `stop` is passed by default - the user's model object already
  carries its provider's temperature, max tokens and so on, and provider kwargs differ.
  `pass_settings=("max_tokens", "temperature", ...)` forwards more `GenerationSettings` fields
  as call kwargs for providers that accept them.

Failures raise `BackendError` with one line (`<model>: <Type>: <message>`); when the consumer
stops iterating, the LangChain stream is closed (`aclose`), which stops generation.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

import json
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.runnables import Runnable

from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from tokenrelay.errors import BackendError, ConfigError, TokenrelayError
from tokenrelay.events import Usage
from tokenrelay.integrations.langchain.common import content_parts, describe_error
from tokenrelay.messages import Message, ToolSpec

__all__ = ["LangChainBackend", "backend_from_model_id", "model_name", "to_langchain_messages"]

_LENGTH_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS", "max_output_tokens"})
_SETTINGS = frozenset({"max_tokens", "temperature", "top_p", "seed"})


def model_name(model: Any) -> str:
    """A readable name for a LangChain model: its model id when it has one, else its type."""
    for attr in ("model_name", "model", "model_id", "deployment_name"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    llm_type = getattr(model, "_llm_type", None)
    return llm_type if isinstance(llm_type, str) and llm_type else type(model).__name__


def to_langchain_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """Our chat messages as LangChain messages (tool calls and results included)."""
    out: list[BaseMessage] = []
    for message in messages:
        if message.role == "system":
            out.append(SystemMessage(content=message.content))
        elif message.role == "user":
            out.append(HumanMessage(content=message.content))
        elif message.role == "assistant":
            calls = []
            invalid = []
            for call in message.tool_calls:
                try:
                    args = json.loads(call.arguments) if call.arguments.strip() else {}
                except ValueError:
                    args = None
                if isinstance(args, dict):
                    calls.append(tool_call(name=call.name, args=args, id=call.id))
                else:
                    invalid.append(
                        invalid_tool_call(
                            name=call.name,
                            args=call.arguments,
                            id=call.id,
                            error="the arguments are not a JSON object",
                        )
                    )
            out.append(AIMessage(content=message.content, tool_calls=calls, invalid_tool_calls=invalid))
        else:
            out.append(ToolMessage(content=message.content, tool_call_id=message.tool_call_id or ""))
    return out


def _tools_key(tools: Sequence[ToolSpec]) -> tuple[tuple[str, str, str], ...]:
    return tuple((t.name, t.description, json.dumps(t.parameters, sort_keys=True)) for t in tools)


class LangChainBackend(Backend):
    """A LangChain `BaseChatModel` behind tokenrelay's `Backend` seam."""

    def __init__(
        self,
        model: BaseChatModel,
        *,
        name: str | None = None,
        pass_settings: Collection[str] = (),
        context_window: int | None = None,
    ) -> None:
        unknown = set(pass_settings) - _SETTINGS
        if unknown:
            raise ValueError(f"pass_settings may name {sorted(_SETTINGS)}, not {sorted(unknown)}")
        self.model = model
        self.name = name or model_name(model)
        self.pass_settings = tuple(pass_settings)
        self.context_window = context_window
        self.supports_native_tools = type(model).bind_tools is not BaseChatModel.bind_tools
        self._bound: dict[tuple[tuple[str, str, str], ...], Runnable[Any, Any]] = {}

    def _runnable(self, tools: Sequence[ToolSpec] | None) -> Runnable[Any, Any]:
        if not tools:
            return self.model
        key = _tools_key(tools)
        bound = self._bound.get(key)
        if bound is None:
            try:
                bound = self.model.bind_tools([spec.to_openai() for spec in tools])
            except NotImplementedError:
                raise BackendError(f"{self.name}: this model does not support tool calling") from None
            except Exception as exc:
                raise BackendError(f"{self.name}: binding tools failed: {describe_error(exc)}") from exc
            if len(self._bound) >= 32:
                self._bound.clear()
            self._bound[key] = bound
        return bound

    def _kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if settings.stop:
            kwargs["stop"] = list(settings.stop)
        for name in self.pass_settings:
            value = getattr(settings, name)
            if value is not None:
                kwargs[name] = value
        return kwargs

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        runnable = self._runnable(tools)
        lc_messages = to_langchain_messages(messages)
        prompt_tokens = completion_tokens = 0
        saw_usage = saw_tool_call = False
        reason: Any = None
        last_index = -1
        try:
            source: AsyncIterator[Any] = runnable.astream(lc_messages, **self._kwargs(settings))
            try:
                async for chunk in source:
                    content = chunk.content
                    if type(content) is str:
                        text, thinking = content, ""
                    else:
                        text, thinking = content_parts(content)
                    extra = chunk.additional_kwargs
                    if extra:
                        more = extra.get("reasoning_content")
                        if isinstance(more, str):
                            thinking += more
                    if thinking:
                        yield ThinkingChunk(thinking)
                    if text:
                        yield TextChunk(text)
                    pieces = getattr(chunk, "tool_call_chunks", None)
                    if pieces:
                        for piece in pieces:
                            index = piece.get("index")
                            if not isinstance(index, int):
                                # no index: a piece with an id or a name starts a new call
                                new = piece.get("id") or piece.get("name") or last_index < 0
                                index = last_index + 1 if new else last_index
                            last_index = max(last_index, index)
                            saw_tool_call = True
                            yield ToolCallChunk(
                                index=index,
                                id=piece.get("id") or None,
                                name=piece.get("name") or None,
                                arguments=piece.get("args") or "",
                            )
                    elif isinstance(chunk, AIMessage) and (chunk.tool_calls or chunk.invalid_tool_calls):
                        # a model without streaming: astream yields the whole message once
                        for call in [*chunk.tool_calls, *chunk.invalid_tool_calls]:
                            last_index += 1
                            saw_tool_call = True
                            args = call.get("args")  # parsed (a valid call) or raw text (an invalid one)
                            yield ToolCallChunk(
                                index=last_index,
                                id=call.get("id"),
                                name=call.get("name"),
                                arguments=json.dumps(args, ensure_ascii=False)
                                if isinstance(args, dict)
                                else args or "",
                            )
                    usage = getattr(chunk, "usage_metadata", None)
                    if usage:
                        saw_usage = True
                        prompt_tokens += usage.get("input_tokens", 0) or 0
                        completion_tokens += usage.get("output_tokens", 0) or 0
                    meta = chunk.response_metadata
                    if meta:
                        reason = meta.get("finish_reason") or meta.get("stop_reason") or reason
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()
        except TokenrelayError:
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            raise BackendError(
                f"{self.name}: {describe_error(exc)}",
                status=status if isinstance(status, int) else None,
            ) from exc
        if saw_tool_call:
            finish = "tool_calls"
        elif reason in _LENGTH_REASONS:
            finish = "length"
        else:
            finish = "stop"
        usage_out = (
            Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens) if saw_usage else None
        )
        yield FinishChunk(finish, usage_out)


def backend_from_model_id(model_id: str) -> LangChainBackend:
    """A backend for a LangChain model id such as `openai:gpt-4o-mini` or
    `anthropic:claude-sonnet-4-5`, built by LangChain's `init_chat_model` (the `langchain`
    package and the provider's package must be installed). For the model string
    `langchain:<model id>`. Raises `ConfigError` with one line when it cannot be built."""
    if not model_id.strip():
        raise ConfigError("langchain: needs a LangChain model id, e.g. 'langchain:openai:gpt-4o-mini'")
    try:
        from langchain.chat_models import init_chat_model  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            f"langchain:{model_id} needs the langchain package and the provider's: "
            "pip install langchain langchain-<provider>"
        ) from None
    try:
        model = init_chat_model(model_id)
    except Exception as exc:  # a missing provider package, an unknown provider, missing credentials
        raise ConfigError(f"langchain:{model_id}: {describe_error(exc)}") from None
    if not isinstance(model, BaseChatModel):  # pragma: no cover - init_chat_model returns chat models
        raise ConfigError(f"langchain:{model_id} is not a chat model")
    return LangChainBackend(model)
