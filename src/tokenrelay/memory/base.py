"""Conversation memory: sessions and their turns, behind one small async Protocol.

A turn is written in two steps so nothing the user said is ever lost: `begin_turn` stores
the user's message (status `running`) before generation starts; `finish_turn` stores the
answer (or the partial answer) with its final status. `open_turn` (`TurnOpener`, given to
every store by `StoreBase`) does what a run needs before its first model call in one call:
the session check, the memory window, the document and `begin_turn`. Sessions belong to an
owner (an API key's identity, or None when keys are off); every read and write takes the
caller's owner, and a session of another owner behaves exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "ANY_OWNER",
    "INTERRUPTED_MARK",
    "Document",
    "OpenedTurn",
    "SessionInfo",
    "SessionStore",
    "Step",
    "TurnOpener",
    "Turn",
    "TurnStatus",
    "remembered",
]

TurnStatus = Literal["running", "complete", "interrupted", "failed"]

#: One step of a turn, as JSON-ready data, in the order it happened:
#: `{"type": "narration", "text"}` (answer text the model wrote before calling a tool) or
#: `{"type": "tool", "call_id", "name", "arguments", "result", "error"}`.
Step = dict[str, Any]

#: Ends the assistant message of a remembered turn whose answer was cut short (interrupted or
#: failed after some text), so the model knows that answer is partial.
INTERRUPTED_MARK = " [interrupted]"


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionInfo:
    id: str
    owner: str | None
    title: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Turn:
    id: int
    session_id: str
    run_id: str
    user_text: str
    answer: str
    status: TurnStatus
    error: str | None
    created_at: float
    finished_at: float | None
    #: why the last model call stopped: "stop", "length" (the answer was cut off), or None
    finish_reason: str | None = None
    #: narration and tool calls of the turn, in order (see `Step`)
    steps: tuple[Step, ...] = ()


def remembered(turns: Sequence[Turn]) -> list[tuple[str, str]]:
    """The memory window as (user, assistant) pairs: turns with an answer, a partial answer
    marked with `INTERRUPTED_MARK`. `turns` should come from `history(..., answered=True)`;
    anything without an answer is skipped here too."""
    pairs = []
    for turn in turns:
        if turn.status == "running" or not turn.answer:
            continue
        answer = turn.answer if turn.status == "complete" else turn.answer + INTERRUPTED_MARK
        pairs.append((turn.user_text, answer))
    return pairs


@dataclass(frozen=True, kw_only=True, slots=True)
class Document:
    """A text attached to a session; it becomes context for every question in it.

    `text` is what the model sees. When the upload did not fit the context window, `text` is
    its first part and `total_chars` (> len(text)), `total_tokens` and `budget_tokens` say how
    much was left out, so the notice survives reopening the chat and the model is told too.
    They are None for a document stored whole (or stored before they were recorded)."""

    name: str
    text: str
    created_at: float
    total_chars: int | None = None
    total_tokens: int | None = None
    budget_tokens: int | None = None

    @property
    def truncated(self) -> bool:
        return self.total_chars is not None and self.total_chars > len(self.text)

    def prompt_text(self) -> str:
        """The document as the model is given it: its text and, when it was cut, a note at
        the cut saying so (so the model does not answer as if it had read the rest)."""
        if not self.truncated:
            return self.text
        return (
            f"{self.text}\n\n[NOTE: the document was cut here to fit the context window. The text above is "
            f"the first {len(self.text)} of its {self.total_chars} characters; the rest is missing. If the "
            "question needs the missing part, say that the document was cut.]"
        )


class AnyOwner:
    """The type of `ANY_OWNER`."""

    def __repr__(self) -> str:
        return "ANY_OWNER"


#: `open_turn(..., owner=ANY_OWNER)`: the caller has checked the session's owner already (the
#: server resolves the session before the run starts), so the store does not check it again.
ANY_OWNER = AnyOwner()


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenedTurn:
    """What `open_turn` returns: the session's id (a new one when it was created), its memory window
    (`history(..., limit=window, answered=True)`, oldest first), its document (None when not
    asked for or not attached) and the new `running` turn's id."""

    session_id: str
    history: list[Turn]
    document: Document | None
    turn_id: int


class TurnOpener(Protocol):
    """A store that opens a turn in one call (one round trip, one transaction): `StoreBase`
    gives every store one composed of the `SessionStore` calls; the SQLite and PostgreSQL
    stores do it in one hop. A store without it is driven through those calls instead
    (`memory.common.compose_open_turn`)."""

    async def open_turn(
        self,
        session_id: str | None,
        *,
        owner: str | None | AnyOwner = None,
        run_id: str,
        user_text: str,
        window: int = 0,
        document: bool = True,
        create: bool = False,
    ) -> OpenedTurn:
        """Start a turn: `session_id=None` creates a new session of `owner` (a fresh id;
        `owner=ANY_OWNER` means None there), and so does `create=True` with `session_id` as
        its id (`ValueError` if it exists); otherwise the session must exist and be
        `owner`'s (not checked for `ANY_OWNER`), else `KeyError`. Reads the memory window of
        the last `window` answered turns and (`document=True`) the document, stores
        `user_text` as a `running` turn as `begin_turn` does, and returns all of it."""
        ...


class SessionStore(Protocol):
    async def create_session(
        self, *, owner: str | None = None, session_id: str | None = None, title: str = ""
    ) -> SessionInfo:
        """Create a session (a fresh random id unless `session_id` is given)."""
        ...

    async def get_session(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None: ...

    async def list_sessions(
        self, *, owner: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        """Most recently updated first; `after`: only those listed after that session of
        `owner` (the last one of the previous page; none when it is not `owner`'s)."""
        ...

    async def count_sessions(self, *, owner: str | None = None) -> int:
        """How many sessions `owner` has (for the per-key limit)."""
        ...

    async def delete_session(self, session_id: str, *, owner: str | None = None) -> bool: ...

    async def set_title(self, session_id: str, title: str, *, owner: str | None = None) -> SessionInfo | None:
        """Rename a session (its `updated_at` stays); None when it is not the owner's."""
        ...

    async def begin_turn(self, session_id: str, *, run_id: str, user_text: str) -> int:
        """Store the user's message as a `running` turn; return the turn id."""
        ...

    async def finish_turn(
        self,
        turn_id: int,
        *,
        answer: str,
        status: TurnStatus,
        error: str | None = None,
        finish_reason: str | None = None,
        steps: Sequence[Step] = (),
    ) -> None:
        """Store the answer (final, or partial when interrupted/failed), its status, why the
        model stopped and the turn's steps; a turn that is not `running` is left as is."""
        ...

    async def history(
        self, session_id: str, *, limit: int | None = None, answered: bool = False
    ) -> list[Turn]:
        """The last `limit` turns (all when None), oldest first. `answered`: only turns that
        have an answer (finished, with a non-empty answer, partial ones included): the
        memory window, so failed, empty and running turns never push real ones out."""
        ...

    async def update_partial(self, turn_id: int, answer: str) -> None:
        """Checkpoint a running turn's partial answer (a crash then loses only the tail)."""
        ...

    async def interrupt_run(self, run_id: str, *, error: str) -> bool:
        """Mark the turn of `run_id` interrupted if it is still `running` (its worker died);
        True if a turn changed."""
        ...

    async def integrity_check(self) -> str:
        """'ok' when the storage is sound."""
        ...

    async def set_document(
        self,
        session_id: str,
        *,
        name: str,
        text: str,
        total_chars: int | None = None,
        total_tokens: int | None = None,
        budget_tokens: int | None = None,
    ) -> None:
        """Attach (or replace) the session's document; the counts describe what was cut
        (see `Document`). Raises `KeyError` for a missing session."""
        ...

    async def get_document(self, session_id: str) -> Document | None: ...

    async def recover_running(self) -> int:
        """Mark turns left `running` by a crash as `interrupted`; return how many."""
        ...

    async def close(self) -> None: ...
