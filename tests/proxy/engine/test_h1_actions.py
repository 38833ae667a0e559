"""The client side's decisions on failures (``engine/h1/actions.py``): facts in, one action
out, no I/O; then the real engine doing them on in-memory transports."""

from __future__ import annotations

import pytest

from limpet.proxy.engine.h1 import actions
from limpet.proxy.engine.h1.actions import Do, Fail
from limpet.proxy.engine.h1.connection import State

from ..fuzzing import Harness


def test_a_connect_failure_reroutes_once_then_fails_the_backend() -> None:
    assert actions.after_connect_failure(retried=False) is Do.REROUTE
    assert actions.after_connect_failure(retried=True) == Fail(502, backend_failed=True)


@pytest.mark.parametrize(
    ("redialled", "idempotent", "body_sent", "expected"),
    [
        (False, True, False, Do.REDIAL),  # a stale pooled connection: dial afresh once
        (True, True, False, Fail(502)),  # ... only once
        (False, False, False, Fail(502)),  # a POST is never sent twice
        (False, True, True, Fail(502)),  # nor a request whose body started
    ],
)
def test_a_backend_that_closes_before_answering_is_redialled_once_when_safe(
    redialled: bool, idempotent: bool, body_sent: bool, expected: actions.Action
) -> None:
    got = actions.after_upstream_closed(
        State.WAITING,
        redialled=redialled,
        idempotent=idempotent,
        body_sent=body_sent,
        reset=False,
    )
    assert got == expected


def test_a_reset_counts_against_the_backend_and_nothing_is_done_once_answered() -> None:
    facts = {"redialled": True, "idempotent": True, "body_sent": False, "reset": True}
    assert actions.after_upstream_closed(State.WAITING, **facts) == Fail(502, backend_failed=True)
    for state in (State.IDLE, State.DRAINING, State.CLOSED):
        assert actions.after_upstream_closed(state, **facts) is Do.NOTHING


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (State.WAITING, Fail(504, close=True)),
        (State.RECEIVING, Fail(504, close=True)),
        (State.SWITCHING, Fail(504, close=True)),
        (State.RESPONDING, Do.ABORT),  # the head left: only cutting the client short is honest
        (State.DUPLEX, Do.ABORT),
        (State.REFUSED, Do.ABORT),
        (State.CLOSED, Do.NOTHING),
        (State.DRAINING, Do.NOTHING),  # answered: the request's body is only dropped
        (State.IDLE, Do.NOTHING),
    ],
)
def test_an_upstream_error_is_answered_until_the_answer_has_started(
    state: State, expected: actions.Action
) -> None:
    assert actions.after_upstream_error(state, 504) == expected


@pytest.mark.parametrize(
    ("state", "status", "keep_alive", "has_body", "closes"),
    [
        (State.WAITING, 503, True, False, False),
        (State.WAITING, 503, False, False, True),  # the client asked to close
        (State.WAITING, 400, True, False, True),  # not understood: where does the next start?
        (State.WAITING, 505, True, False, True),
        (State.RECEIVING, 503, True, True, True),  # the body is still on its way
        (State.RECEIVING, 503, True, False, False),
        (State.WAITING, 502, True, True, False),  # the body was read whole
    ],
)
def test_whether_the_proxys_own_answer_closes_the_connection(
    state: State, status: int, keep_alive: bool, has_body: bool, closes: bool
) -> None:
    got = actions.answer_closes(
        state, status, keep_alive=keep_alive, has_body=has_body, upgrade=False
    )
    assert got is closes
    assert actions.answer_closes(state, status, keep_alive=True, has_body=False, upgrade=True) is (
        status in actions.CLOSING_STATUSES or state == State.RECEIVING
    )


# -- the engine doing them ---------------------------------------------------------------------


def test_a_broken_answer_is_a_502_that_closes_the_client_connection() -> None:
    h = Harness()
    up, _ = h.idle_backend()
    client, ct = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    up.data_received(b"SSH-2.0-x\r\n")
    assert ct.out.startswith(b"HTTP/1.1 502 ")
    assert b"Connection: close" in ct.out
    assert ct.closed
    assert client.state == State.CLOSED
    h.close()


def test_a_broken_answer_after_its_head_left_cuts_the_client_short() -> None:
    h = Harness()
    up, _ = h.idle_backend()
    client, ct = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    up.data_received(b"zz\r\n")
    assert ct.out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b" 502 " not in ct.out
    assert ct.aborted
    h.close()


def test_a_post_whose_backend_closes_unanswered_gets_a_502_not_a_second_send() -> None:
    h = Harness()
    up, up_out = h.idle_backend()
    client, ct = h.client()
    client.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
    up.connection_lost(None)
    assert ct.out.startswith(b"HTTP/1.1 502 ")
    assert up_out.out.count(b"POST /") == 1
    assert client.state == State.IDLE  # the body was read whole: the connection goes on
    h.close()
