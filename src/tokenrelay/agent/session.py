"""One run's turn in a session: the session rules, in one place for every agent.

Every agent that keeps a conversation (tokenrelay's `Agent`, the LangChain `RunnableAgent`)
goes through `SessionTurn`, so the CLI, the server and the library store turns the same way:

* before the first model call: the memory window (`memory_k` answered turns, oldest first,
  as (user, assistant) pairs after `remembered`) and the attached document are read, and the
  user's message is stored as a `running` turn (`open`), in one store call (`open_turn`: one
  hop to the database for the SQLite and PostgreSQL stores; composed of the `SessionStore`
  calls for a store without it);
* while the answer streams: `checkpoint(answer)` stores the partial answer at most every
  `checkpoint_s` seconds, so a crash loses only the tail;
* when the run ends, on every path (complete, failed, consumer gone, task cancelled):
  `finish(...)` stores the answer exactly once, shielded from cancellation; a storage failure
  is logged, never raised into the stream.

Without a store or a session id the turn is a no-op that still gives the caller's history.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import anyio

from tokenrelay.memory.base import ANY_OWNER, OpenedTurn, SessionStore, TurnStatus, remembered
from tokenrelay.memory.common import compose_open_turn

__all__ = ["SessionTurn"]

log = logging.getLogger("tokenrelay.agent")


class SessionTurn:
    """The stored turn of one run (see the module docstring). Not shared between runs."""

    def __init__(
        self,
        store: SessionStore | None,
        session_id: str | None,
        *,
        run_id: str,
        memory_k: int,
        checkpoint_s: float = 1.0,
        create: bool = False,
        owner: str | None = None,
    ) -> None:
        """`create`: the session does not exist yet; `open` creates it as `owner`'s."""
        self.store = store if session_id is not None else None
        self.create = create
        self.owner = owner
        self.session_id = session_id
        self.run_id = run_id
        self.memory_k = memory_k
        self.checkpoint_s = checkpoint_s
        self.turn_id: int | None = None
        #: the session's remembered (user, assistant) pairs, after `open`
        self.pairs: list[tuple[str, str]] = []
        #: the attached document's prompt text, after `open`
        self.document: str | None = None
        #: when the next `checkpoint` is due (`math.inf` while not recording): a caller on the
        #: per-token path compares with it before calling `checkpoint`
        self.checkpoint_at = math.inf

    @property
    def recording(self) -> bool:
        """Whether this run is stored as a turn (after `open`)."""
        return self.turn_id is not None

    async def open(self, text: str, *, document: bool = True) -> None:
        """Read the memory window (and the document unless `document=False`), then store
        `text` as a running turn."""
        if self.store is None or self.session_id is None:
            return
        # a store that keeps to `SessionStore` only: the same, composed of its calls
        open_turn = getattr(self.store, "open_turn", None) or functools.partial(compose_open_turn, self.store)
        # owner: the caller has resolved the session already (the server: 404 for another
        # owner's), or it is new (`create`): then it is created as `owner`'s, in the same call
        opened: OpenedTurn = await open_turn(
            self.session_id,
            owner=self.owner if self.create else ANY_OWNER,
            run_id=self.run_id,
            user_text=text,
            window=self.memory_k,
            document=document,
            create=self.create,
        )
        self.pairs = remembered(opened.history)
        doc = opened.document
        self.document = doc.prompt_text() if doc else None
        self.turn_id = opened.turn_id
        self.checkpoint_at = time.monotonic() + self.checkpoint_s

    async def checkpoint(self, answer: str) -> None:
        """Store the partial `answer` if `checkpoint_s` has passed since the last time."""
        if self.turn_id is None or self.store is None or time.monotonic() < self.checkpoint_at:
            return
        await self.store.update_partial(self.turn_id, answer)
        self.checkpoint_at = time.monotonic() + self.checkpoint_s

    async def finish(
        self, status: TurnStatus, answer: str, *, error: str | None = None, **details: Any
    ) -> None:
        """Store the turn's outcome (once; later calls do nothing), shielded from cancellation.
        `details`: the store's other `finish_turn` fields (`finish_reason`, `steps`)."""
        turn_id, self.turn_id = self.turn_id, None
        self.checkpoint_at = math.inf
        if turn_id is None or self.store is None:
            return
        # shielded: a client disconnect cancels this task, but the turn must be stored
        with anyio.CancelScope(shield=True):
            try:
                await self.store.finish_turn(turn_id, answer=answer, status=status, error=error, **details)
            except Exception:
                log.exception("run %s: storing the turn failed", self.run_id)
