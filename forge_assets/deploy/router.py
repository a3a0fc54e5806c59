"""Forge's router: a language's stable endpoint, in front of whichever llama.cpp server currently serves it.

Forge runs it as a script (standard library only, so it starts in a fraction of a second):

    python router.py --host 127.0.0.1 --port 8088 --route <artifact_root>/deployment/<language>/route.json

It listens on host:port and forwards each new TCP connection, byte for byte, to the upstream named in the route
file (``{"host": ..., "port": ..., "tag": ...}``), read as the connection arrives. Forge replaces that file
atomically (``os.replace``) once a new server has answered a smoke request, so new connections go to the new
server while connections already open finish on the one they started on. When the upstream cannot be reached
the client gets an HTTP 502 whose JSON body says which server did not answer. On SIGTERM the router stops
accepting and exits when its open connections have closed (at most --drain seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

CHUNK = 64 * 1024


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forge-router: {msg}", file=sys.stderr, flush=True)


def read_route(path: str) -> tuple[str, int]:
    with open(path, encoding="utf-8") as fh:
        route = json.load(fh)
    return route["host"], int(route["port"])


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()


async def _bad_gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: str) -> None:
    with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)  # read the request head so closing does not reset
    body = json.dumps({"error": {"message": f"forge router: {error}", "type": "bad_gateway", "code": 502}}).encode()
    head = (f"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(head + body)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            while await asyncio.wait_for(reader.read(CHUNK), 1):
                pass


class Router:
    def __init__(self, route: str, connect_timeout: float = 10.0):
        self.route = route
        self.connect_timeout = connect_timeout
        self.open: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.open.add(task)
        try:
            try:
                host, port = read_route(self.route)
            except (OSError, ValueError, KeyError) as exc:
                await _bad_gateway(reader, writer, f"no usable route in {self.route} ({exc})")
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                reason = "refused the connection" if isinstance(exc, ConnectionRefusedError) else f"did not answer ({exc or 'timeout'})"
                _log(f"upstream {host}:{port} {reason}")
                await _bad_gateway(reader, writer, f"the llama.cpp server on {host}:{port} {reason}")
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            up_writer.close()
        finally:
            writer.close()
            self.open.discard(task)


async def serve(host: str, port: int, route: str, drain: float) -> None:
    router = Router(route)
    server = await asyncio.start_server(router.handle, host, port, reuse_address=True, backlog=512)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    _log(f"listening on {host}:{port}, routing by {route}")
    await stopping.wait()
    server.close()
    deadline = loop.time() + drain
    while router.open and loop.time() < deadline:
        await asyncio.sleep(0.05)
    _log(f"stopped ({len(router.open)} connection(s) still open)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge-router")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", required=True)
    parser.add_argument("--drain", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.route, args.drain))
    except OSError as exc:
        _log(f"cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
