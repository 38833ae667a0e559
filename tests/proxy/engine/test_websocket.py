"""WebSocket (and any Upgrade) connections are tunnelled to the session's backend: after
the backend's 101 the proxy pipes raw bytes both ways."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import aiohttp
import pytest

from ..conftest import Backends, Conn, Proxies, established_to, standalone_args


async def test_websocket_echo_through_proxy(backends: Backends, proxy: Proxies) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1, b2))
    async with aiohttp.ClientSession() as session:
        async with session.get(p.url("/pin")) as first:
            cookie = first.headers["Set-Cookie"].split(";")[0]
            backend = (await first.json())["backend"]
        async with session.ws_connect(p.url("/ws"), headers={"Cookie": cookie}) as ws:
            for i in range(50):
                await ws.send_str(f"m{i}")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT
                # The tunnel goes to the session's backend.
                assert msg.data == f"{backend}:m{i}"
            big = bytes(range(256)) * 4096  # 1 MiB in one frame
            await ws.send_bytes(big)
            echoed = await ws.receive()
            assert echoed.type == aiohttp.WSMsgType.BINARY
            assert echoed.data == big
            await ws.close()
    assert p.stats()["engine"]["tunnels"] == 1


def test_upgrade_refused_by_backend_is_a_plain_answer(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b))
    with Conn(p.address) as c:
        r = c.request(
            "GET", "/not-a-websocket", headers={"Connection": "Upgrade", "Upgrade": "foo/1"}
        )
        assert r.status == 200
        # Bytes after an upgrade request may belong to the new protocol: the connection
        # is not reused once the backend declined.
        assert r.header("Connection") == "close"
        assert c.closed_by_peer()


@pytest.mark.parametrize("side", ["client", "backend"])
async def test_tunnel_closes_when_one_side_closes(
    backends: Backends, proxy: Proxies, side: str
) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(p.url("/ws"))
        await ws.send_str("hi")
        assert (await ws.receive()).data == "b1:hi"
        if side == "client":
            await ws.close()
        else:
            b.kill()
            msg = await ws.receive(timeout=10)
            assert msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            )
            await ws.close()
    engine = await asyncio.to_thread(p.wait_idle)
    assert engine["connections_active"] == 0


def _masked_frame(payload: bytes) -> bytes:
    """One client-to-server binary WebSocket frame (a zero mask leaves the bytes as
    they are; RFC 6455 only requires the mask bit)."""
    return bytes((0x82, 0x80 | 127)) + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload


def test_a_tunnel_whose_client_stops_reading_is_cut_after_the_send_timeout(
    backends: Backends, proxy: Proxies
) -> None:
    """A WebSocket client that sends but never reads the echoes: the tunnel's bytes to it
    back up (the backend is paused, as for an answer), and after --send-timeout the
    proxy cuts the client and the tunnel's backend connection."""
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--send-timeout", "1")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(p.address)
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # a byte at a time: no frame read with it
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        frame = memoryview(_masked_frame(bytes(1 << 20)))
        s.setblocking(False)
        sent, pending, cut, deadline = 0, frame, False, time.monotonic() + 20
        while p.stats()["engine"]["timeouts"].get("send", 0) == 0:
            assert time.monotonic() < deadline, (sent, p.stats()["engine"])
            if not cut:
                try:
                    n = s.send(pending)
                    sent, pending = sent + n, pending[n:] or frame
                except BlockingIOError:
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    cut = True  # the proxy cut it between our look at its stats and now
            time.sleep(0.01)
        while established_to(b.port):  # the tunnel's backend side goes with the client
            assert time.monotonic() < deadline, "backend connection still open"
            time.sleep(0.1)
        assert sent > 1 << 20, sent  # echoes were due: more than one frame went out
    with Conn(p.address) as c:  # and the proxy serves the next client as usual
        assert c.request("GET", "/after").status == 200
