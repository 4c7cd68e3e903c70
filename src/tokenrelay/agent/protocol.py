"""The agent seam: what a caller passes for one run (`RunRequest`) and what an agent is (`AgentLike`).

Every agent the library, the CLI and the server run - tokenrelay's own `Agent`, the no-agent
`PlainChat`, the LangChain bridge's `RunnableAgent` and `CallbackAgent` - has a `name` (the
model it reports) and `stream(request)`, an async iterator of events that starts with one
`RunStarted` and ends with exactly one `RunFinished` or `RunError`.

`AgentBase` gives the keyword convenience `run(text, **options)`, so the long signature is
written here only. `run` returns `stream(...)`'s iterator itself (no wrapping generator): the
per-token generator chain is as deep as the agent's own.

`accepts` names the optional request fields an agent honours beyond text, session, mode,
run id, history and answer policy; `api.Runner.stream` refuses a request that sets any other
with `UnsupportedRequest` instead of silently ignoring it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from tokenrelay.backends.base import GenerationSettings
from tokenrelay.errors import TokenrelayError
from tokenrelay.events import Event
from tokenrelay.memory.base import SessionStore

__all__ = [
    "OPTIONAL_FIELDS",
    "AgentAdapter",
    "AgentBase",
    "AgentLike",
    "AnswerPolicy",
    "RunRequest",
    "StreamMode",
    "UnsupportedRequest",
    "as_agent",
    "unsupported_fields",
]

StreamMode = Literal["final", "full"]
AnswerPolicy = Literal["stream", "hold"]

#: the request fields an agent may or may not honour (see `AgentLike.accepts`); an agent may
#: also name `new_session` there (the server then leaves creating a new session to its run)
OPTIONAL_FIELDS: tuple[str, ...] = ("generation", "system")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One run's inputs, as every caller (CLI, server routes, library) passes them.

    `history` is (user, assistant) pairs given by the caller (stateless APIs such as the
    OpenAI-compatible endpoint); it comes before the session's own memory. `answer_policy`
    overrides the agent's for this run; `generation` replaces the agent's sampling settings
    for the answer-writing model calls; `system` is added to the agent's system prompt.
    `new_session`: `session_id` names a session that does not exist yet; the agent creates it,
    as `owner`'s, in the same store call that stores the first turn (one hop to the database
    instead of two: the server's new conversations), for an agent whose `accepts` names it."""

    text: str
    session_id: str | None = None
    mode: StreamMode = "final"
    run_id: str | None = None
    history: tuple[tuple[str, str], ...] = ()
    answer_policy: AnswerPolicy | None = None
    generation: GenerationSettings | None = None
    system: str | None = None
    new_session: bool = False
    owner: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("final", "full"):
            raise ValueError(f"mode must be 'final' or 'full', not {self.mode!r}")
        if self.answer_policy not in (None, "stream", "hold"):
            raise ValueError(f"answer_policy must be 'stream' or 'hold', not {self.answer_policy!r}")
        if self.new_session and not self.session_id:
            raise ValueError("new_session needs the new session's id")
        if not isinstance(self.history, tuple):  # a list from a caller: frozen means immutable
            object.__setattr__(self, "history", tuple((u, a) for u, a in self.history))


class UnsupportedRequest(TokenrelayError):
    """A request asks for something the agent cannot do (e.g. per-run sampling settings on a
    LangChain graph). Raised before the run starts; the message names what and which agent."""

    code = "unsupported"


@runtime_checkable
class AgentLike(Protocol):
    """What the library, the CLI and the server need of an agent."""

    @property
    def name(self) -> str:
        """The model (or graph) name the run reports in `RunStarted.model`, /health, /v1/models."""
        ...

    @property
    def accepts(self) -> frozenset[str]:
        """Which of `OPTIONAL_FIELDS` this agent honours."""
        ...

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """The run's events: one `RunStarted`, then exactly one `RunFinished` or `RunError` last."""
        ...


def unsupported_fields(agent: AgentLike, request: RunRequest) -> list[str]:
    """The optional fields `request` sets that `agent` does not honour (empty when all is well)."""
    accepts: frozenset[str] = getattr(agent, "accepts", frozenset())
    unsupported = [f for f in OPTIONAL_FIELDS if getattr(request, f) is not None and f not in accepts]
    if request.new_session and "new_session" not in accepts:
        unsupported.append("new_session")
    return unsupported


class AgentBase:
    """A base for agents: `name` and `stream(request)` to implement; `run(text, **options)` and a
    no-op `warm()` given."""

    accepts: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        raise NotImplementedError

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        raise NotImplementedError

    async def warm(self) -> None:
        """Do now what the first run would pay for (nothing, unless an agent says otherwise)."""

    def bind_store(self, store: SessionStore) -> None:
        """Offered the session store of the runner that serves this agent: an agent that keeps
        sessions and was given no store of its own takes it. The default keeps none."""

    def run(
        self,
        text: str,
        *,
        session_id: str | None = None,
        mode: StreamMode = "final",
        run_id: str | None = None,
        history: Sequence[tuple[str, str]] = (),
        answer_policy: AnswerPolicy | None = None,
        generation: GenerationSettings | None = None,
        system: str | None = None,
    ) -> AsyncIterator[Event]:
        """`stream(RunRequest(text, ...))`: the same events, the same iterator."""
        fields = (session_id, mode, run_id, tuple(history), answer_policy, generation, system)
        return self.stream(RunRequest(text, *fields))


class AgentAdapter(AgentBase):
    """Any `AgentLike` as an `AgentBase` (for `run`, `warm`, `bind_store`), optionally under
    another `name`: `stream` is the agent's own iterator, so the per-token chain gets no deeper."""

    def __init__(self, agent: AgentLike, *, name: str | None = None) -> None:
        self.agent = agent
        self.accepts: frozenset[str] = frozenset(getattr(agent, "accepts", frozenset()))
        self._name = name

    @property
    def name(self) -> str:
        """The agent's name, or the one given (what a server reports as its model)."""
        return self._name or self.agent.name

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        return self.agent.stream(request)

    async def warm(self) -> None:
        warm = getattr(self.agent, "warm", None)
        if warm is not None:
            await warm()

    def bind_store(self, store: SessionStore) -> None:
        bind = getattr(self.agent, "bind_store", None)
        if bind is not None:
            bind(store)


def as_agent(agent: AgentLike) -> AgentBase:
    """`agent` itself when it is an `AgentBase`, else an `AgentAdapter` around it."""
    return agent if isinstance(agent, AgentBase) else AgentAdapter(agent)
