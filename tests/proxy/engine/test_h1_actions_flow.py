"""The decisions of a request that succeeds (``engine/h1/actions.py``): routing, the
connection, how the head leaves, what becomes of a backend connection and of the client
connection after an exchange, the upgrade. Facts in, one action out, no I/O; then the
real engine doing them on in-memory transports."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import pytest

from limpet.affinity import BackendId
from limpet.proxy.engine.h1 import actions
from limpet.proxy.engine.h1.actions import Bind, Connect, Dialled, Routing
from limpet.proxy.engine.h1.connection import ANSWER_OUT, State
from limpet.proxy.engine.port import Route

from ..fuzzing import Harness, MemoryTransport

ROUTE = Route(BackendId("s1"), "127.0.0.1", 9, None, (), None, None, False)


@pytest.mark.parametrize(
    ("enum", "prefix"),
    [
        (actions.Routing, "ROUTE_"),
        (actions.Connect, "CONNECT_"),
        (actions.Bind, "BIND_"),
        (actions.Dialled, "DIALLED_"),
        (actions.Reuse, "REUSE_"),
        (actions.Next, "NEXT_"),
        (actions.Upgrade, "UPGRADE_"),
        (actions.Interim, "INTERIM_"),
    ],
)
def test_the_shells_constants_are_the_members_values(enum: type[IntEnum], prefix: str) -> None:
    for member in enum:
        value = getattr(actions, prefix + member.name)
        assert type(value) is int  # compared as exact ints on the hot path
        assert value == member.value


# -- routing and the connection ----------------------------------------------------------


async def _pending() -> Route | None:
    return ROUTE


def test_the_routers_answer_is_sent_awaited_or_a_503() -> None:
    assert actions.after_routing(ROUTE) == Routing.SEND
    assert actions.after_routing(None) == Routing.NO_BACKEND
    pending = _pending()
    assert actions.after_routing(pending) == Routing.AWAIT
    pending.close()


def test_a_pooled_connection_is_bound_else_one_is_dialled() -> None:
    assert actions.connect(pooled=True) == Connect.BIND
    assert actions.connect(pooled=False) == Connect.DIAL


@pytest.mark.parametrize(
    ("holding", "feeding", "has_body", "expected"),
    [
        (False, True, False, Bind.HEAD),  # a GET in its read: the head at once
        (False, False, False, Bind.HEAD),
        (False, False, True, Bind.HEAD),  # a pipelined POST started later: its body follows
        (False, True, True, Bind.WITH_READ),  # the read's body bytes join the head
        (True, True, True, Bind.HELD),  # after a dial or the store: what was held goes too
        (True, False, False, Bind.HELD),
    ],
)
def test_how_the_head_leaves_once_a_connection_is_bound(
    holding: bool, feeding: bool, has_body: bool, expected: Bind
) -> None:
    got = actions.on_bind(holding=holding, feeding=feeding, has_body=has_body)
    assert got == expected


@pytest.mark.parametrize("state", list(State))
def test_a_dialled_connection_is_bound_only_while_its_request_waits(state: State) -> None:
    assert actions.after_dial(state, current=False) == Dialled.SPARE
    expected = Dialled.SPARE if ANSWER_OUT[state] else Dialled.BIND
    assert actions.after_dial(state, current=True) == expected


# -- the engine doing them ---------------------------------------------------------------


def test_a_routed_request_binds_the_pooled_connection_and_writes_its_head_at_once() -> None:
    h = Harness()
    up, up_out = h.idle_backend()
    client, _ = h.client()
    client.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert up.client is client
    assert up_out.out.startswith(b"GET /a HTTP/1.1\r\n")
    assert h.pool.idle_count() == 0
    h.close()


class CountingTransport(MemoryTransport):
    """A memory transport that counts its write calls (a ``writelines`` is one writev)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.out += data

    def writelines(self, list_of_data: Any) -> None:
        self.writes += 1
        for data in list_of_data:
            self.out += data


def test_a_post_in_one_read_leaves_in_one_write_with_its_body() -> None:
    h = Harness()
    up, _ = h.idle_backend()
    up_out = CountingTransport()
    up.transport = up_out
    client, _ = h.client()
    client.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert up_out.writes == 1
    assert up_out.out.startswith(b"POST /a HTTP/1.1\r\n")
    assert up_out.out.endswith(b"\r\n\r\nabc")
    h.close()
