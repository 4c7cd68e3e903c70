"""Tools the agent can call: plain Python functions with a JSON schema from their type hints.

`@tool` (or `Tool.from_function`) derives the input schema with pydantic from the function
signature, so the model sees exact parameter types and arguments are validated before the
function runs. Invariants of `Tool.invoke`:

* it never raises for a tool failure: bad arguments, an exception in the function, or the
  timeout all become `ToolOutcome(error=...)`, an observation the model can react to;
* sync functions run in a worker thread (the event loop never blocks); async functions are
  awaited; both are bounded by the timeout (a sync function that ignores it keeps its thread
  until it returns, but the run goes on).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import pydantic

from tokenrelay.messages import ToolSpec

__all__ = ["Tool", "ToolOutcome", "tool"]

_MAX_OBSERVATION_CHARS = 8_000


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: str | None = None
    error: str | None = None

    @property
    def observation(self) -> str:
        return (self.result or "") if self.error is None else f"Error: {self.error}"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    function: Callable[..., Any]
    model: type[pydantic.BaseModel]

    @classmethod
    def from_function(
        cls, function: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        fields: dict[str, Any] = {}
        for param in inspect.signature(function).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {function.__name__}: *args/**kwargs are not supported")
            if param.name.startswith("_"):
                raise TypeError(
                    f"tool {function.__name__}: parameter {param.name!r} starts with an underscore; "
                    "tool parameters need public names"
                )
            annotation = Any if param.annotation is param.empty else param.annotation
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        model = pydantic.create_model(f"{function.__name__}_input", **fields)
        doc = inspect.getdoc(function) or ""
        return cls(
            name=name or function.__name__,
            description=description or doc.split("\n\n")[0] or function.__name__,
            function=function,
            model=model,
        )

    @property
    def parameters(self) -> dict[str, Any]:
        schema = self.model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return schema

    @property
    def single_input(self) -> str | None:
        """The parameter name when the tool takes exactly one required parameter."""
        required = [n for n, f in self.model.model_fields.items() if f.is_required()]
        return required[0] if len(self.model.model_fields) == 1 and len(required) == 1 else None

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def parse_arguments(self, arguments: Any) -> dict[str, Any]:
        """Turn what the model wrote (JSON text, a string for one-input tools, an object)
        into validated keyword arguments. Raises ValueError with a model-readable message."""
        if isinstance(arguments, str):
            text = arguments.strip()
            parsed: Any = None
            if text.startswith("{"):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError:
                    parsed = None
            if isinstance(parsed, dict):
                arguments = parsed
            elif self.single_input is not None:
                arguments = {self.single_input: arguments}
            elif not text and not self.model.model_fields:
                arguments = {}
            else:
                raise ValueError(f"{self.name} needs a JSON object with {sorted(self.model.model_fields)}")
        if not isinstance(arguments, dict):
            if self.single_input is None:
                raise ValueError(f"{self.name} needs a JSON object with {sorted(self.model.model_fields)}")
            arguments = {self.single_input: arguments}
        try:
            validated = self.model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid input for {self.name}: {problems}") from None
        return {name: getattr(validated, name) for name in self.model.model_fields}

    async def invoke(self, arguments: Any, *, timeout_s: float | None = 30.0) -> ToolOutcome:
        try:
            kwargs = self.parse_arguments(arguments)
        except ValueError as exc:
            return ToolOutcome(error=str(exc))
        try:
            async with asyncio.timeout(timeout_s):
                if inspect.iscoroutinefunction(self.function):
                    value = await self.function(**kwargs)
                else:
                    value = await _in_daemon_thread(self.function, kwargs, self.name)
        except TimeoutError:
            return ToolOutcome(error=f"{self.name} timed out after {timeout_s:g} s")
        except asyncio.CancelledError:
            raise
        except (Exception, SystemExit) as exc:  # a tool's failure is an observation, not a crash
            return ToolOutcome(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > _MAX_OBSERVATION_CHARS:
            text = text[:_MAX_OBSERVATION_CHARS] + f"… [truncated {len(text) - _MAX_OBSERVATION_CHARS} chars]"
        return ToolOutcome(result=text)


def _in_daemon_thread(function: Callable[..., Any], kwargs: dict[str, Any], name: str) -> asyncio.Future[Any]:
    """Run a sync tool in a daemon thread of its own: one that never returns is abandoned after
    the timeout without holding up shutdown (the default executor's threads are joined)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    def work() -> None:
        try:
            value, error = context.run(function, **kwargs), None
        except BaseException as exc:  # handed to the awaiting task
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name=f"tool-{name}", daemon=True).start()
    return future


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    function: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: `@tool` or `@tool(name=..., description=...)` turns a function into a Tool."""
    if function is not None:
        return Tool.from_function(function)

    def wrap(fn: Callable[..., Any]) -> Tool:
        return Tool.from_function(fn, name=name, description=description)

    return wrap


def as_tools(items: Sequence[Tool | Callable[..., Any] | Callable[..., Awaitable[Any]]]) -> list[Tool]:
    """Accept tools or plain functions; reject duplicate names."""
    tools = [item if isinstance(item, Tool) else Tool.from_function(item) for item in items]
    names = [t.name for t in tools]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate tool names: {sorted(duplicates)}")
    return tools
