"""`tokenrelay._redact.redact_url`: the one URL redaction, used by every message and repr."""

from __future__ import annotations

import pytest

from tokenrelay._redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@localhost/db", "postgresql://u:***@localhost/db"),
        ("postgresql://nobody:x@127.0.0.1:1/nowhere", "postgresql://nobody:***@127.0.0.1:1/nowhere"),
        ("redis://:secret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://user@redis:6379/0", "redis://user@redis:6379/0"),
        ("redis://localhost", "redis://localhost"),
        ("http://user:pw@host.invalid/v1?key=x#frag", "http://user:***@host.invalid/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("mysql://user:p%40ss@db.example/app", "mysql://user:***@db.example/app"),
        ("/var/lib/tokenrelay/sessions.db", "/var/lib/tokenrelay/sessions.db"),
        ("", ""),
        ("http://[::1/v1", "<invalid URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_password_with_an_at_sign_is_hidden() -> None:
    shown = redact_url("postgresql://u:a@b@host/db")
    assert "a@b" not in shown and shown.endswith("@host/db")
