"""Fixtures shared by every test file (pytest finds this file itself; nothing imports it).

Test-side helper modules that several files import (`server_fixture`, `fake_openai`, `replies`,
`sse_frames`, ...) stay ordinary modules beside it; stream checks a user could want too live
in `tokenrelay.testing` (`check_events`, `final_answer`, `shown_text`), not here.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) run on asyncio only: the server, the backends and
    the stores are asyncio code, and trio is not a dependency. Session-scoped so module-scoped
    async fixtures (a loaded model shared by a file's tests) can use it too."""
    return "asyncio"
