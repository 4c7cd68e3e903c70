"""A local stand-in for the Hugging Face Hub's file endpoints, for `hf:` download tests.

It answers what `huggingface_hub.hf_hub_download` asks (read from its source, 0.26-2.x):

* `HEAD /{repo}/resolve/{revision}/{file}`: for an LFS file the Hub answers 302 to its CDN,
  with `X-Repo-Commit` (40 hex), `X-Linked-Etag` (the file's SHA-256, quoted), `X-Linked-Size`
  and `Location`. The CDN here is the same server under another host name (`localhost` vs
  `127.0.0.1`), so huggingface_hub treats it as off-Hub, as it does the real CDN: it takes the
  metadata from the 302 and does not follow it. Unknown files: 404 with
  `X-Error-Code: EntryNotFound` (or `RepoNotFound`);
* `GET /cdn/{sha256}`: the bytes, honouring `Range: bytes=N-` with 206 and `Content-Range`
  (huggingface_hub resumes a dropped download that way).

Knobs for tests: `drop_after` (cut the connection once, after that many bytes of a GET),
`corrupt` (serve one flipped byte, keeping the size and the advertised hash). Every request is
recorded in `requests` as (method, path, Range header or None).
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

__all__ = ["FakeHub"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, Path]) -> None:
        """`files` maps "OWNER/REPO/FILE" to a local file to serve."""
        self.files = {name: path.read_bytes() for name, path in files.items()}
        self.sha = {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}
        self.by_sha = {self.sha[name]: name for name in self.files}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: int | None = None
        self.corrupt = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def gets(self) -> list[tuple[str, str | None]]:
        """The file downloads asked for: (path, Range header)."""
        return [(path, rng) for method, path, rng in self.requests if method == "GET" and "/cdn/" in path]

    def file_requests(self) -> list[tuple[str, str, str | None]]:
        """Requests about files (huggingface_hub also fetches /api/... registries)."""
        return [r for r in self.requests if "/resolve/" in r[1] or "/cdn/" in r[1]]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _resolve(self, body: bool) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self._error(404, "RepoNotFound")
                    return
                name = "/".join([*parts[:2], *parts[4:]])
                if name not in hub.files:
                    known_repo = any(n.startswith("/".join(parts[:2]) + "/") for n in hub.files)
                    self._error(404, "EntryNotFound" if known_repo else "RepoNotFound")
                    return
                sha = hub.sha[name]
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{hub.port}/cdn/{sha}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(hub.files[name])))
                self.send_header("ETag", '"pointer-etag"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _error(self, status: int, code: str) -> None:
                body = b'{"error": "not found"}'
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _cdn(self) -> None:
                sha = self.path.rsplit("/", 1)[-1]
                name = hub.by_sha.get(sha)
                if name is None:
                    self._error(404, "EntryNotFound")
                    return
                data = hub.files[name]
                if hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-", 1)[0] or 0)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.command == "HEAD":
                    return
                end = len(data)
                if hub.drop_after is not None:
                    end = min(end, start + hub.drop_after)
                    hub.drop_after = None
                view = memoryview(data)[start:end]
                for i in range(0, len(view), 1 << 20):
                    self.wfile.write(view[i : i + (1 << 20)])
                if end < len(data):  # the connection dies mid-body
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
                if self.path.startswith("/cdn/"):
                    self._cdn()
                else:
                    self._resolve(body=False)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path, self.headers.get("Range")))
                if self.path.startswith("/cdn/"):
                    self._cdn()
                else:
                    self._resolve(body=True)

        return Handler
