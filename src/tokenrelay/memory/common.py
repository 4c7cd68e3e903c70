"""What every session store shares: ids, titles, the final-status rule, argument checks, and
`StoreBase`, which takes `finish_turn`'s and `set_document`'s arguments once for all stores
and gives each an `open_turn` composed of its other calls (`compose_open_turn`).

Invariants:

* `finish_turn` accepts only a final status (`FINAL_STATUSES`); anything else raises
  `ValueError` before the store is touched.
* A `limit` is 0 or more (`check_limit`), else `ValueError`.
* Timestamps are taken here, on the calling worker's clock (`time.time()`), when the call is
  made: a write queued or retried later still records when it was asked for.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from tokenrelay.memory.base import AnyOwner, Document, OpenedTurn, SessionStore, Step, TurnStatus

__all__ = [
    "FINAL_STATUSES",
    "RECOVERED_ERROR",
    "FinalTurn",
    "StoreBase",
    "check_limit",
    "check_window",
    "compose_open_turn",
    "new_session_id",
    "title_from_text",
]

#: The error stored on turns that `recover_running` marks `interrupted`.
RECOVERED_ERROR = "server stopped before the run finished"
#: The statuses `finish_turn` accepts.
FINAL_STATUSES: frozenset[str] = frozenset({"complete", "interrupted", "failed"})
TITLE_CHARS = 60


def new_session_id() -> str:
    """A fresh unguessable session id (128 random bits)."""
    return "s_" + secrets.token_urlsafe(16)


def title_from_text(text: str) -> str:
    """A session title from the first message: one line, at most 60 characters."""
    return " ".join(text.split())[:TITLE_CHARS]


def check_limit(limit: int | None) -> None:
    """`ValueError` for a negative limit (None: no limit)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")


def check_window(window: int) -> None:
    """`ValueError` for a negative memory window."""
    if window < 0:
        raise ValueError(f"window must be 0 or more, not {window}")


async def compose_open_turn(
    store: SessionStore,
    session_id: str | None,
    *,
    owner: str | None | AnyOwner = None,
    run_id: str,
    user_text: str,
    window: int = 0,
    document: bool = True,
    create: bool = False,
) -> OpenedTurn:
    """`TurnOpener.open_turn` made of the `SessionStore` calls (one hop each): what a store
    without its own `open_turn` does. Not atomic: a session deleted meanwhile makes
    `begin_turn` raise `KeyError`, as it would alone."""
    check_window(window)
    if session_id is None or create:
        new_owner = None if isinstance(owner, AnyOwner) else owner
        session_id = (await store.create_session(owner=new_owner, session_id=session_id)).id
    elif not isinstance(owner, AnyOwner) and await store.get_session(session_id, owner=owner) is None:
        raise KeyError(session_id)
    history = await store.history(session_id, limit=window, answered=True) if window else []
    doc = await store.get_document(session_id) if document else None
    turn_id = await store.begin_turn(session_id, run_id=run_id, user_text=user_text)
    return OpenedTurn(session_id=session_id, history=history, document=doc, turn_id=turn_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class FinalTurn:
    """What `finish_turn` stores on a running turn."""

    answer: str
    status: TurnStatus
    error: str | None
    finish_reason: str | None
    steps: tuple[Step, ...]
    finished_at: float


class StoreBase(ABC):
    """The argument handling of `finish_turn` and `set_document`; a store implements
    `_finish` and `_put_document`."""

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
        """Store the final answer and status; a turn that is not `running` is left as is."""
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"finish_turn needs a final status (complete, interrupted, failed), not {status!r}"
            )
        final = FinalTurn(
            answer=answer,
            status=status,
            error=error,
            finish_reason=finish_reason,
            steps=tuple(dict(step) for step in steps),
            finished_at=time.time(),
        )
        await self._finish(turn_id, final)

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
        """Attach (or replace) the session's document. Raises `KeyError` for a missing session."""
        document = Document(
            name=name,
            text=text,
            created_at=time.time(),
            total_chars=total_chars,
            total_tokens=total_tokens,
            budget_tokens=budget_tokens,
        )
        await self._put_document(session_id, document)

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
        """See `TurnOpener.open_turn`; this default composes the `SessionStore` calls
        (`compose_open_turn`); a store overrides it to do the same in one hop."""
        return await compose_open_turn(
            cast(SessionStore, self),
            session_id,
            owner=owner,
            run_id=run_id,
            user_text=user_text,
            window=window,
            document=document,
            create=create,
        )

    @abstractmethod
    async def _finish(self, turn_id: int, final: FinalTurn) -> None:
        """Write `final` on the turn if it is still `running`."""

    @abstractmethod
    async def _put_document(self, session_id: str, document: Document) -> None:
        """Insert or replace the session's document; `KeyError` for a missing session."""
