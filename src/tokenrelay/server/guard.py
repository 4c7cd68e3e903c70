"""The first thing a request meets: the Host allow-list and the API key, both checked on the
head alone, before anything reads the body.

* Without API keys a server trusts whoever reaches it, so it must not be reachable from a web
  page through DNS rebinding (a hostile name that resolves to 127.0.0.1): it answers only the
  host names it is known by (localhost, 127.0.0.1, [::1], its `host` setting, and the names in
  `allowed_hosts`; `*` turns the check off). Others get 400 `host_not_allowed`.
* With API keys, a request that carries a body and no valid key gets 401 at once, with
  `Connection: close`: an unauthenticated client never makes the server hold its body.
  (Routes still check the key themselves: this only moves the refusal earlier.) A request
  with a valid key is counted against the key's requests per minute (server/quotas.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay.config import Settings
from tokenrelay.server.auth import KEY_REQUIRED, owner_for
from tokenrelay.server.errors import error_response
from tokenrelay.server.quotas import QuotaExceeded, quota_response, quotas_of

__all__ = ["LOCAL_HOSTS", "RequestGuard"]

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = settings.api_keys
        hosts = {h.strip().lower().strip("[]") for h in settings.allowed_hosts}
        if settings.host not in ("0.0.0.0", "::", ""):
            hosts.add(settings.host.lower().strip("[]"))
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts | LOCAL_HOSTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.keys:
            host = headers.get(b"host")
            if host is not None and not self.any_host and _hostname(host) not in self.hosts:
                shown = host.decode("latin-1")[:100]
                await _refuse(
                    scope, receive, send, 400, "host_not_allowed",
                    f"Host {shown!r} is not allowed: without API keys this server answers only "
                    "localhost and the names in TOKENRELAY_ALLOWED_HOSTS",
                )  # fmt: skip
                return
        else:
            owner = owner_for(_key(headers), self.keys)
            if owner is None and _has_body(scope["method"], headers):
                await _refuse(scope, receive, send, 401, "401", KEY_REQUIRED, authentication=True)
                return
            quotas = quotas_of(scope.get("app"))
            if owner is not None and quotas is not None:
                try:
                    await quotas.count_request(owner)
                except QuotaExceeded as exc:  # refused before the body is read, too
                    response = quota_response(exc)
                    response.headers["Connection"] = "close"
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _hostname(host: bytes) -> str:
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):  # [::1]:8000
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _has_body(method: str, headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return method in _BODY_METHODS or (length not in (b"", b"0"))


def _key(headers: dict[bytes, bytes]) -> str | None:
    header = headers.get(b"authorization", b"").decode("latin-1")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    authentication: bool = False,
) -> None:
    kind = "authentication_error" if authentication else "invalid_request_error"
    headers = {"Connection": "close"}
    if authentication:
        headers["WWW-Authenticate"] = "Bearer"
    await error_response(message, status, type_=kind, code=code, headers=headers)(scope, receive, send)
