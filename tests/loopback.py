"""A loopback HTTP server standing in for a web host or the Hugging Face Hub in tests.

Each path is served from `files`; `faults` script misbehaviour per path (a list consumed one
request at a time): an int status to answer with, or "drop" to send half the body and cut the
connection. Range requests are honoured, and every request is recorded for assertions.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Loopback:
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[int | str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def hits(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


def serve(state: Loopback) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, send_body: bool) -> None:
            state.requests.append(Request(self.command, self.path, dict(self.headers)))
            path = self.path.split("?", 1)[0]
            pending = state.faults.get(path) or []
            fault = pending.pop(0) if pending else None
            if path not in state.files:
                self._status(404)
                return
            if isinstance(fault, int):
                self._status(fault)
                return
            body = state.files[path]
            start = 0
            range_header = self.headers.get("Range")
            if range_header and range_header.startswith("bytes="):
                start = int(range_header[6:].split("-")[0])
                if start >= len(body):
                    self._status(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            if not send_body:
                return
            if fault == "drop":
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(chunk)

        def _status(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(False)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
