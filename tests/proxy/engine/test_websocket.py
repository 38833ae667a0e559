"""WebSocket (and any Upgrade) connections are tunnelled to the session's backend: after
the backend's 101 the proxy pipes raw bytes both ways."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from ..conftest import Backends, Conn, Proxies, standalone_args


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
