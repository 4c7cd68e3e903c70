"""The one way tokenrelay shows a URL in a message, a log line or a `repr`: without secrets.

    redact_url("postgresql://app:s3cret@db/main?sslmode=require")
    # 'postgresql://app:***@db/main'

Invariants:

* a password in the authority is replaced by `***`; the user name, host, port and path stay
  (they are what a person needs to recognise the target);
* the query string and the fragment are dropped: they often carry tokens (`?key=...`,
  `?password=...`), and a message never needs them;
* text without `scheme://` (a file path, a bare host) is returned unchanged;
* it never raises: an unparseable URL becomes `<invalid URL>`.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """`url` without its password, query string or fragment (see the module's invariants)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{user}@{host}"
    else:
        netloc = host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
