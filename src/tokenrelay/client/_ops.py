"""The contract between the client's core and its faces: the operations a plan asks for.

A plan (`StreamCore.plan()`) yields these; a face carries each out and sends back its result
(`Open` → the `httpx.Response`, `Read` → bytes, b"" at the end of the body, the others →
None), or throws in the exception from `TRANSPORT_ERRORS` it raised. `Emit` items go to the
caller. A face holds at most one open response at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = [
    "CLOSE",
    "READ",
    "TRANSPORT_ERRORS",
    "Close",
    "Emit",
    "Feed",
    "Op",
    "Open",
    "Plan",
    "Read",
    "Request",
    "Sleep",
    "Steps",
]

#: what a face catches around each operation and throws into the plan
TRANSPORT_ERRORS = (httpx.HTTPError, httpx.InvalidURL)


@dataclass(frozen=True, slots=True)
class Request:
    method: Literal["GET", "POST"]
    url: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    timeout: httpx.Timeout

    def build(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return client.build_request(
            self.method, self.url, json=self.body, headers=self.headers, timeout=self.timeout
        )


@dataclass(frozen=True, slots=True)
class Open:
    """Send `request` and answer with the `httpx.Response`, its body not read yet."""

    request: Request


class Read:
    """Answer with the next chunk of the open response's body, b"" at its end."""


class Close:
    """Close the open response."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand these items to the caller, in order."""

    items: list[Any]


READ = Read()
CLOSE = Close()
Op = Open | Read | Close | Sleep | Emit
Plan = Generator[Op, object, None]
#: one connection's body reader: a chunk in, items out; b"" means the body ended cleanly
Feed = Callable[[bytes], list[Any]]


class Steps:
    """A face's hold on a plan: `next()` is the next operation (None once the plan is over),
    having sent the plan the outcome of the previous one: `reply`, or `error` thrown in."""

    __slots__ = ("_plan", "error", "reply")

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self.reply: object = None
        self.error: Exception | None = None

    def next(self) -> Op | None:
        reply, error = self.reply, self.error
        self.reply = self.error = None
        try:
            return self._plan.send(reply) if error is None else self._plan.throw(error)
        except StopIteration:
            return None

    def close(self) -> None:
        self._plan.close()
