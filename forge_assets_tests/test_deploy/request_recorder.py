"""A small logging HTTP proxy for tests: put it in front of a model server to record every request a
client (OpenCode, Continue, ...) sends and what the server answered.

    with RequestRecorder("http://127.0.0.1:8080") as rec:
        ...point the client at rec.url (e.g. f"{rec.url}/v1")...
    rec.records  # [Exchange(method, path, headers, body, status, response_headers, response_body, ...)]

Responses are streamed back to the client as they arrive (server-sent events included), and copied
into the record. A `responder` can answer instead of the upstream server, to see how a client takes a
given answer: `responder(exchange) -> Reply | None` (None: forward as usual). Without an upstream
every request needs a responder's reply (else 502).

Only loopback addresses are served and forwarded to. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Hop-by-hop headers are not forwarded (RFC 9110 7.6.1); the body is re-framed by this proxy.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass
class Reply:
    """A canned answer: status, headers and body (bytes, or an iterable of byte chunks sent as they come)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""


@dataclass
class Exchange:
    """One request and its response, as seen by the proxy."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    started: float
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    finished: float | None = None
    error: str | None = None  # a failure to reach the upstream server or to write back to the client
    canned: bool = False  # answered by the responder, not the upstream server

    @property
    def body(self) -> Any:
        """The request body as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.raw_body) if self.raw_body else None
        except ValueError:
            return None

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def sse_events(self) -> list[Any]:
        """The `data:` events of a server-sent-events response, each JSON-decoded when it can be ("[DONE]" kept as text)."""
        out: list[Any] = []
        for line in self.response_body.decode("utf-8", "replace").splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                try:
                    out.append(json.loads(data))
                except ValueError:
                    out.append(data)
        return out

    def is_sse(self) -> bool:
        return "text/event-stream" in {k.lower(): v for k, v in self.response_headers.items()}.get("content-type", "")

    def finish_reasons(self) -> list[str]:
        """Every non-null `choices[].finish_reason` of a streamed (or plain JSON) chat completion."""
        events = self.sse_events() if self.is_sse() else [self.response_json()]
        return [c["finish_reason"] for ev in events if isinstance(ev, dict) for c in ev.get("choices") or []
                if isinstance(c, dict) and c.get("finish_reason")]

    def response_json(self) -> Any:
        try:
            return json.loads(self.response_body) if self.response_body else None
        except ValueError:
            return None

    def summary(self) -> dict[str, Any]:
        """A short, JSON-ready view: path, status, time, and the request body's main fields."""
        body = self.body if isinstance(self.body, dict) else {}
        return {
            "method": self.method, "path": self.path, "status": self.status, "seconds": round(self.seconds or 0.0, 3),
            "error": self.error, "canned": self.canned, "finish_reasons": self.finish_reasons() if self.status == 200 else None,
            **{k: body[k] for k in ("model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "tool_choice") if k in body},
            "messages": [m.get("role") for m in body.get("messages") or [] if isinstance(m, dict)],
            "tools": [((t.get("function") or {}).get("name")) for t in body.get("tools") or [] if isinstance(t, dict)],
        }


class RequestRecorder:
    """A threaded HTTP proxy on 127.0.0.1 recording each exchange in `records` (thread-safe append)."""

    def __init__(self, upstream: str | None, port: int = 0, responder: Callable[[Exchange], Reply | None] | None = None,
                 timeout: float = 600.0):
        self.upstream = urlsplit(upstream) if upstream else None
        if self.upstream is not None and self.upstream.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"RequestRecorder forwards to loopback addresses only, not {upstream!r}")
        self.responder = responder
        self.timeout = timeout
        self.records: list[Exchange] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RequestRecorder":
        self._thread = threading.Thread(target=self._server.serve_forever, name="request-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (safe to call twice, or when never started)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "RequestRecorder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def errors(self) -> list[Exchange]:
        """Finished exchanges that failed: a transport error, no status, HTTP status >= 400, or a
        server-sent-events stream that ended without a `finish_reason` (a server that fails after it has
        sent its 200 headers, e.g. llama-cpp-python's on a prompt longer than its context, sends an
        empty stream: OpenCode then asks again, without end)."""
        return [e for e in self.snapshot() if e.finished is not None
                and (e.error or e.status is None or e.status >= 400 or (e.is_sse() and not e.finish_reasons()))]

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.records)

    def dump(self, path: str) -> None:
        """Every exchange as JSON lines (request body decoded, response body as text), for a person to read."""
        with open(path, "w", encoding="utf-8") as fh:
            for e in self.snapshot():
                fh.write(json.dumps({
                    **e.summary(), "headers": e.headers, "body": e.body if e.body is not None else e.raw_body.decode("utf-8", "replace"),
                    "response_headers": e.response_headers, "response_body": e.response_body.decode("utf-8", "replace"),
                }, ensure_ascii=False) + "\n")

    # -----------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ex = Exchange(self.command, self.path, {k: v for k, v in self.headers.items()}, raw, time.monotonic())
                with recorder._lock:
                    recorder.records.append(ex)
                try:
                    reply = recorder.responder(ex) if recorder.responder else None
                    if reply is not None:
                        ex.canned = True
                        self._send(ex, reply.status, reply.headers, [reply.body] if isinstance(reply.body, bytes) else reply.body)
                    elif recorder.upstream is None:
                        self._send(ex, 502, {"Content-Type": "application/json"}, [b'{"error": {"message": "no upstream and no canned reply"}}'])
                    else:
                        self._forward(ex)
                except Exception as exc:  # noqa: BLE001 - recorded, and the client sees a dropped connection
                    ex.error = f"{type(exc).__name__}: {exc}"
                    self.close_connection = True
                finally:
                    ex.finished = time.monotonic()

            def _forward(self, ex: Exchange) -> None:
                up = recorder.upstream
                assert up is not None
                conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=recorder.timeout)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
                    headers["Host"] = up.netloc
                    if ex.raw_body or self.command in ("POST", "PUT", "PATCH"):
                        headers["Content-Length"] = str(len(ex.raw_body))
                    conn.request(self.command, (up.path.rstrip("/") + self.path) if up.path else self.path, body=ex.raw_body or None, headers=headers)
                    resp = conn.getresponse()

                    def chunks() -> Iterable[bytes]:
                        while True:
                            data = resp.read1(65536)
                            if not data:
                                return
                            yield data

                    self._send(ex, resp.status, {k: v for k, v in resp.getheaders()}, chunks())
                finally:
                    conn.close()

            def _send(self, ex: Exchange, status: int, headers: dict[str, str], body: Iterable[bytes]) -> None:
                ex.status = status
                ex.response_headers = dict(headers)
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                got = bytearray()
                for data in body:
                    if not data:
                        continue
                    got += data
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                ex.response_body = bytes(got)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        return Handler
