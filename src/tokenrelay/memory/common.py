"""What every session store shares: ids, titles, the final-status rule, argument checks, and
`StoreBase`, which takes `finish_turn`'s and `set_document`'s arguments once for all stores.

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

from tokenrelay.memory.base import Document, Step, TurnStatus

__all__ = [
    "FINAL_STATUSES",
    "RECOVERED_ERROR",
    "FinalTurn",
    "StoreBase",
    "check_limit",
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

    @abstractmethod
    async def _finish(self, turn_id: int, final: FinalTurn) -> None:
        """Write `final` on the turn if it is still `running`."""

    @abstractmethod
    async def _put_document(self, session_id: str, document: Document) -> None:
        """Insert or replace the session's document; `KeyError` for a missing session."""
