"""`SessionStore` held in dicts: for ephemeral CLI runs and tests; nothing survives the process.

Same behaviour as `SQLiteSessionStore` (the test suite runs against both): ownership
isolation, titles from the first message, cascade delete, and a finished turn is never
rewritten. Methods never await between reading and writing, so each one is atomic on the
event loop. Not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

from tokenrelay.memory.base import Document, SessionInfo, Turn
from tokenrelay.memory.common import (
    RECOVERED_ERROR,
    FinalTurn,
    StoreBase,
    check_limit,
    new_session_id,
    title_from_text,
)

__all__ = ["InMemorySessionStore"]


class InMemorySessionStore(StoreBase):
    def __init__(self) -> None:
        self._sessions: dict[str, SessionInfo] = {}
        self._order: dict[str, int] = {}  # creation order: tie-break for equal updated_at
        self._turns: dict[int, Turn] = {}  # insertion order == id order
        self._documents: dict[str, Document] = {}
        self._by_session: dict[str, list[int]] = {}  # turn ids per session, in order
        self._seq = itertools.count(1)

    async def create_session(
        self, *, owner: str | None = None, session_id: str | None = None, title: str = ""
    ) -> SessionInfo:
        if session_id is not None and not session_id:
            raise ValueError("session_id must not be empty")
        sid = session_id or new_session_id()
        if sid in self._sessions:
            raise ValueError(f"session {sid!r} already exists")
        now = time.time()
        info = SessionInfo(id=sid, owner=owner, title=title, created_at=now, updated_at=now)
        self._sessions[sid] = info
        self._order[sid] = next(self._seq)
        return info

    async def get_session(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        info = self._sessions.get(session_id)
        return info if info is not None and info.owner == owner else None

    async def list_sessions(
        self, *, owner: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        check_limit(limit)
        mine = [s for s in self._sessions.values() if s.owner == owner]
        mine.sort(key=lambda s: (s.updated_at, self._order[s.id]), reverse=True)
        if after is not None:
            cursor = self._sessions.get(after)
            if cursor is None or cursor.owner != owner:
                return []
            key = (cursor.updated_at, self._order[after])
            mine = [s for s in mine if (s.updated_at, self._order[s.id]) < key]
        return mine[:limit]

    async def count_sessions(self, *, owner: str | None = None) -> int:
        return sum(1 for s in self._sessions.values() if s.owner == owner)

    async def delete_session(self, session_id: str, *, owner: str | None = None) -> bool:
        if await self.get_session(session_id, owner=owner) is None:
            return False
        del self._sessions[session_id], self._order[session_id]
        self._documents.pop(session_id, None)
        for turn_id in self._by_session.pop(session_id, []):
            del self._turns[turn_id]
        return True

    async def set_title(self, session_id: str, title: str, *, owner: str | None = None) -> SessionInfo | None:
        info = await self.get_session(session_id, owner=owner)
        if info is None:
            return None
        info = self._sessions[session_id] = dataclasses.replace(info, title=title)
        return info

    async def begin_turn(self, session_id: str, *, run_id: str, user_text: str) -> int:
        info = self._sessions.get(session_id)
        if info is None:
            raise KeyError(session_id)
        now = time.time()
        turn_id = next(self._seq)
        self._by_session.setdefault(session_id, []).append(turn_id)
        self._turns[turn_id] = Turn(
            id=turn_id,
            session_id=session_id,
            run_id=run_id,
            user_text=user_text,
            answer="",
            status="running",
            error=None,
            created_at=now,
            finished_at=None,
        )
        self._sessions[session_id] = dataclasses.replace(
            info, updated_at=now, title=info.title or title_from_text(user_text)
        )
        return turn_id

    async def update_partial(self, turn_id: int, answer: str) -> None:
        turn = self._turns.get(turn_id)
        if turn is not None and turn.status == "running":
            self._turns[turn_id] = dataclasses.replace(turn, answer=answer)

    async def _finish(self, turn_id: int, final: FinalTurn) -> None:
        turn = self._turns.get(turn_id)
        if turn is not None and turn.status == "running":
            self._turns[turn_id] = dataclasses.replace(
                turn,
                answer=final.answer,
                status=final.status,
                error=final.error,
                finished_at=final.finished_at,
                finish_reason=final.finish_reason,
                steps=final.steps,
            )

    async def history(
        self, session_id: str, *, limit: int | None = None, answered: bool = False
    ) -> list[Turn]:
        check_limit(limit)
        turns = [self._turns[i] for i in self._by_session.get(session_id, ())]
        if answered:
            turns = [t for t in turns if t.status != "running" and t.answer]
        return turns if limit is None else turns[max(0, len(turns) - limit) :]

    async def interrupt_run(self, run_id: str, *, error: str) -> bool:
        for turn in self._turns.values():
            if turn.run_id == run_id and turn.status == "running":
                self._turns[turn.id] = dataclasses.replace(
                    turn, status="interrupted", error=error, finished_at=time.time()
                )
                return True
        return False

    async def recover_running(self) -> int:
        now = time.time()
        running = [t for t in self._turns.values() if t.status == "running"]
        for turn in running:
            self._turns[turn.id] = dataclasses.replace(
                turn, status="interrupted", error=RECOVERED_ERROR, finished_at=now
            )
        return len(running)

    async def _put_document(self, session_id: str, document: Document) -> None:
        if session_id not in self._sessions:
            raise KeyError(session_id)
        self._documents[session_id] = document

    async def get_document(self, session_id: str) -> Document | None:
        return self._documents.get(session_id)

    async def integrity_check(self) -> str:
        return "ok"

    async def close(self) -> None:
        pass
