"""A stand-alone test backend, run as a real process: ``python backends.py --id b1``.

It prints ``READY <port>`` on stdout once listening on 127.0.0.1 and serves until killed.
Every answer carries ``X-Backend: <id>``. Paths (the query string sets parameters):

- ``/download?size=N&mode=cl|chunked|eof``  N bytes of a repeating pattern, streamed.
- ``/sleep?s=SECONDS``                      echo after a delay.
- ``/status/CODE``                          an empty answer with that status (204, 304, ...).
- ``/setcookie?name=N&value=V``             echo plus ``Set-Cookie: N=V``.
- ``/broken``                               bytes that are not HTTP, connection left open.
- ``/truncate``                             Content-Length 100, 10 bytes, then close.
- ``/close``                                echo with ``Connection: close``.
- ``/trailers``                             a chunked answer with a trailer field.
- ``/early-hints``                          ``103 Early Hints``, then a 200 answer.
- ``/ws``                                   a WebSocket that echoes every message.
- ``/reject-expect``                        answers 417 to ``Expect: 100-continue``.
- ``/arm-stale``                            echo; the next request on the same connection
                                            is met by closing it unanswered (a stale
                                            keep-alive connection).
- ``/reset``                                reads the whole body, then resets the
                                            connection (SO_LINGER 0 close) unanswered.
- ``/resets``                               JSON list of the requests ``/reset`` got
                                            (echo form, in order of arrival).
- anything else                             JSON echo: method, path, version, headers, the
                                            body's length and sha256 (hashed while
                                            streaming, never held whole), the peer port
                                            (also in the ``X-Peer-Port`` header).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import socket
import struct
import sys

from aiohttp import WSMsgType, web

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(size: int) -> bytes:
    """The first ``size`` bytes of the download pattern (for checking downloads)."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


async def echo_payload(request: web.Request, backend: str) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return {
        "backend": backend,
        "method": request.method,
        "path": request.raw_path,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k, v] for k, v in raw_headers(request)],
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
        "peer_port": peer[1] if peer else None,
    }


def raw_headers(request: web.Request) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


def make_app(backend: str) -> web.Application:
    async def reject_expect(request: web.Request) -> web.StreamResponse | None:
        if request.path == "/reject-expect":
            return web.Response(status=417, text="no\n", headers={"X-Backend": backend})
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    armed: set[object] = set()
    resets: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.transport in armed:
            armed.discard(request.transport)
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(3600)
        if path == "/arm-stale":
            armed.add(request.transport)
        q = request.query
        hdr = {"X-Backend": backend}
        if path == "/download":
            size = int(q.get("size", "0"))
            mode = q.get("mode", "cl")
            if mode == "eof":
                return await raw_eof_download(request, size, backend)
            resp = web.StreamResponse(headers=hdr)
            if mode == "cl":
                resp.content_length = size
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            sent = 0
            while sent < size:
                piece = PATTERN[: min(len(PATTERN), size - sent)]
                await resp.write(piece)
                sent += len(piece)
            await resp.write_eof()
            return resp
        if path == "/sleep":
            await asyncio.sleep(float(q.get("s", "1")))
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            await request.read()
            return web.Response(status=code, headers=hdr)
        elif path == "/reset":
            resets.append(await echo_payload(request, backend))
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # with a zero linger the kernel sends RST, not FIN
            await asyncio.sleep(3600)
        elif path == "/resets":
            return web.json_response(resets, headers=hdr)
        elif path == "/broken":
            assert request.transport is not None
            request.transport.write(b"THIS IS NOT HTTP\r\n\r\n")
            await asyncio.sleep(3600)
        elif path == "/truncate":
            assert request.transport is not None
            request.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Backend: "
                + backend.encode()
                + b"\r\n\r\n0123456789"
            )
            await asyncio.sleep(0.05)
            request.transport.close()
            await asyncio.sleep(3600)
        elif path == "/trailers":
            assert request.transport is not None
            request.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n"
                b"Connection: close\r\n"
                b"X-Backend: " + backend.encode() + b"\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"
            )
            await asyncio.sleep(0.05)
            request.transport.close()
            await asyncio.sleep(3600)
        elif path == "/early-hints":
            assert request.transport is not None
            request.transport.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            )
            await asyncio.sleep(0.05)
            request.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nX-Backend: "
                + backend.encode()
                + b"\r\n\r\nok"
            )
            request.transport.close()
            await asyncio.sleep(3600)
        elif path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(f"{backend}:{msg.data}")
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws
        payload = await echo_payload(request, backend)
        headers = dict(hdr)
        # The proxy's source port for this request: which backend connection carried it
        # (also in answers to HEAD, which have no body).
        headers["X-Peer-Port"] = str(payload["peer_port"])
        if path == "/setcookie":
            headers["Set-Cookie"] = f"{q.get('name', 'APP')}={q.get('value', 'v')}; Path=/"
        if path == "/close":
            headers["Connection"] = "close"
        return web.json_response(payload, headers=headers)

    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", handle, expect_handler=reject_expect)
    return app


async def raw_eof_download(request: web.Request, size: int, backend: str) -> web.StreamResponse:
    """An HTTP/1.1 answer with neither length nor chunking: the body ends at close."""
    transport = request.transport
    assert transport is not None
    transport.write(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Backend: " + backend.encode() + b"\r\n\r\n"
    )
    sent = 0
    while sent < size:
        piece = PATTERN[: min(len(PATTERN), size - sent)]
        transport.write(piece)
        sent += len(piece)
        # A raw transport offers no drain event; poll its buffer (test code only).
        while transport.get_write_buffer_size() > 1 << 20:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    transport.close()
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def serve(backend: str, port: int) -> None:
    runner = web.AppRunner(
        make_app(backend), handle_signals=False, access_log=None, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    actual = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    sys.stdout.write(f"READY {actual}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.id, args.port))


if __name__ == "__main__":
    main()
