"""The client connection's state machine (``engine/h1/connection.py``): the table alone,
then the real engine on in-memory transports, with no socket and no event loop."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from limpet.proxy.engine.client import ClientConnection
from limpet.proxy.engine.h1 import connection
from limpet.proxy.engine.h1.connection import TRANSITIONS, Event, InvalidTransition, State, step

from ..fuzzing import Harness, MemoryTransport


def state_of(client: ClientConnection) -> int:
    """The connection's state, read afresh (mypy would narrow ``client.state``)."""
    return client.state


def walk(*events: Event) -> int:
    state: int = State.IDLE
    for event in events:
        state = step(state, event)
    return state


def test_an_exchange_goes_round_to_idle() -> None:
    e = Event
    assert walk(e.REQUEST) == State.RECEIVING
    assert walk(e.REQUEST, e.REQUEST_END) == State.WAITING
    assert walk(e.REQUEST, e.REQUEST_END, e.ANSWER) == State.RESPONDING
    assert walk(e.REQUEST, e.REQUEST_END, e.ANSWER, e.ANSWER_END) == State.IDLE


def test_an_answer_before_the_request_ends_drains_the_body_first() -> None:
    e = Event
    assert walk(e.REQUEST, e.ANSWER) == State.DUPLEX
    assert walk(e.REQUEST, e.ANSWER, e.ANSWER_END) == State.DRAINING
    assert walk(e.REQUEST, e.ANSWER, e.ANSWER_END, e.REQUEST_END) == State.IDLE


def test_an_upgrade_becomes_a_tunnel_or_is_refused() -> None:
    e = Event
    switching = (e.REQUEST, e.REQUEST_END, e.UPGRADE)
    assert walk(*switching) == State.SWITCHING
    assert walk(*switching, e.SWITCH) == State.TUNNEL
    assert walk(*switching, e.ANSWER) == State.REFUSED
    assert walk(*switching, e.ANSWER, e.ANSWER_UNSENT) == State.SWITCHING
    with pytest.raises(InvalidTransition):
        walk(*switching, e.ANSWER, e.SWITCH)  # a 101 after another answer began


def test_the_head_that_never_left_takes_the_answer_back() -> None:
    e = Event
    assert walk(e.REQUEST, e.REQUEST_END, e.ANSWER, e.ANSWER_UNSENT) == State.WAITING
    assert walk(e.REQUEST, e.ANSWER, e.ANSWER_UNSENT) == State.RECEIVING


@pytest.mark.parametrize("state", list(State))
def test_close_is_allowed_everywhere(state: State) -> None:
    assert step(state, Event.CLOSE) == State.CLOSED


INVALID = [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), INVALID)
def test_every_pair_outside_the_table_raises_a_clear_error(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition, match=f"event {event.name} in state {state.name}"):
        step(state, event)


def test_the_flags_agree_with_the_table() -> None:
    for s in State:
        # A request is either still read or complete, never both.
        assert not (connection.REQUEST_DONE[s] and connection.READING_BODY[s])
        assert connection.BODY_DUE[s] <= connection.READING_BODY[s]
        # An answer that has started is due, not out.
        assert not (connection.ANSWER_STARTED[s] and connection.ANSWER_OUT[s])
        # Body is read only in the states where REQUEST_END is allowed.
        assert connection.READING_BODY[s] == ((s, Event.REQUEST_END) in TRANSITIONS)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_random_events_never_leave_the_table(events: list[Event]) -> None:
    """Any event sequence: each event either moves to a defined state or is refused with
    an InvalidTransition (the state unchanged); an exchange returns to IDLE only when
    its request and its answer are both complete, and a tunnel only follows an upgrade
    answered by nothing but the 101."""
    state: int = State.IDLE
    request_end = answer_end = upgrade = answered = False
    for event in events:
        if (state, event) not in TRANSITIONS:
            with pytest.raises(InvalidTransition):
                step(state, event)
            continue
        nxt = step(state, event)
        assert nxt in tuple(State)  # a defined state
        if event is Event.REQUEST:
            request_end = answer_end = upgrade = answered = False
        request_end |= event is Event.REQUEST_END
        answer_end |= event is Event.ANSWER_END
        upgrade |= event is Event.UPGRADE
        answered = (answered or event is Event.ANSWER) and event is not Event.ANSWER_UNSENT
        if nxt == State.IDLE:
            assert request_end
            assert answer_end
        if nxt == State.TUNNEL:
            assert upgrade
            assert request_end
            assert not answered
        state = nxt


# -- the engine's states, socket-free --------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"


def test_a_client_connection_walks_its_states_through_a_post() -> None:
    h = Harness()
    up, up_out = h.idle_backend()
    client = ClientConnection(h.server)
    client.connection_made(MemoryTransport())
    assert state_of(client) == State.IDLE
    client.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    assert state_of(client) == State.RECEIVING
    client.data_received(b"cd")
    assert state_of(client) == State.WAITING
    up.data_received(OK[:-2])
    assert state_of(client) == State.RESPONDING
    up.data_received(OK[-2:])
    assert state_of(client) == State.IDLE
    assert up_out.out.endswith(b"\r\n\r\nabcd")
    client.connection_lost(None)
    assert state_of(client) == State.CLOSED
    h.close()


def test_an_answer_before_the_request_ends_closes_the_connection() -> None:
    h = Harness()
    up, _ = h.idle_backend()
    client, ct = h.client()
    client.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    up.data_received(OK)
    # The answer went out with "Connection: close" (the rest of the body is never read),
    # and the backend's connection was not pooled: it still wanted the body.
    assert state_of(client) == State.CLOSED
    assert ct.closed
    assert ct.out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in ct.out
    assert up.client is None
    assert up.transport is not None
    assert up.transport.is_closing()
    h.close()


def test_an_upgrade_answered_101_is_a_tunnel_and_anything_else_closes() -> None:
    h = Harness()
    upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    up, up_out = h.idle_backend()
    client, ct = h.client()
    client.data_received(upgrade + b"early")
    assert state_of(client) == State.SWITCHING
    up.data_received(SWITCHED + b"hi")
    assert state_of(client) == State.TUNNEL
    assert up_out.out.endswith(b"early")  # held until the 101, then passed on
    assert ct.out.endswith(b"\r\n\r\nhi")
    client.connection_lost(None)

    up, _ = h.idle_backend()
    client, ct = h.client()
    client.data_received(upgrade)
    up.data_received(OK)
    assert state_of(client) == State.CLOSED
    assert ct.closed
    assert b"Connection: close" in ct.out
    assert up.state != 1  # not pooled (upstream IDLE): the backend may wait for more
    h.close()


def test_a_pipelined_upgrade_request_switches_when_its_turn_comes() -> None:
    h = Harness()
    up, up_out = h.idle_backend()
    client, ct = h.client()
    client.data_received(REQUESTS["get"] + REQUESTS["upgrade"] + b"early")
    assert state_of(client) == State.WAITING  # the GET's exchange: not switching
    assert b"GET /u " not in up_out.out  # queued behind the GET's answer
    up.data_received(OK)
    assert ct.out.endswith(b"\r\n\r\nok")
    assert b"Connection: close" not in ct.out  # the GET's answer keeps the connection
    assert state_of(client) == State.SWITCHING
    assert b"GET /u " in up_out.out
    up.data_received(SWITCHED + b"hi")
    assert state_of(client) == State.TUNNEL
    assert up_out.out.endswith(b"early")
    assert ct.out.endswith(b"\r\n\r\nhi")
    client.connection_lost(None)
    h.close()


# -- a property over the engine: when may a backend connection be pooled? ---------------------

REQUESTS = {
    "get": b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n",
    "head": b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
    "post": b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabcdef",
    "chunked": (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "upgrade": b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "close": b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}
ANSWERS = {
    "length": OK,
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "eof": b"HTTP/1.1 200 OK\r\n\r\nuntil the end",  # close-delimited: framing unknown
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "switch": SWITCHED,
    "garbage": b"SSH-2.0-x\r\n",
}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(REQUESTS)),
            st.sampled_from(sorted(ANSWERS)),
            st.integers(min_value=0, max_value=200),  # where the request is split
            st.integers(min_value=0, max_value=200),  # where the answer is split
            st.booleans(),  # the answer's first part comes before the request's second
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_backend_connection_is_pooled_only_after_a_clean_complete_exchange(
    exchanges: list[tuple[str, str, int, int, bool]],
) -> None:
    """Random exchanges, split and interleaved at random: every state the connection
    reaches is a State, and whenever the backend connection is back in the pool, the
    exchange on it is complete on both sides, its answer's length was known, and no
    upgrade is pending."""
    # Garbage after a pooled HEAD answer reads as that answer's late body: the request
    # is retried on a fresh connection, and dialling needs an event loop.
    assume(not any(a[0] == "head" and b[1] == "garbage" for a, b in pairwise(exchanges)))
    h = Harness()
    try:
        _exchanges(h, exchanges)
    finally:
        h.close()


def _exchanges(h: Harness, exchanges: list[tuple[str, str, int, int, bool]]) -> None:
    up, _ = h.idle_backend()
    client = ClientConnection(h.server)
    ct = MemoryTransport()
    client.connection_made(ct)
    served: list[tuple[str, str]] = []  # the exchanges the backend connection served

    def check(kind: str, answer: str) -> None:
        assert client.state in tuple(State)
        if up.client is client and served[-1:] != [(kind, answer)]:
            served.append((kind, answer))
        if up.state == 1 and up in h.pool._backends["s1"].idle and served:  # pooled
            last_kind, last_answer = served[-1]
            # Complete on both sides: the client may go on, or asked to close, or was
            # told the connection closes (an answer whose head came before the request's
            # end says "Connection: close": the proxy keeps no connection whose request
            # it had not read whole when it answered).
            if last_kind == "close":
                assert state_of(client) == State.CLOSED
            elif state_of(client) != State.IDLE:
                assert state_of(client) == State.CLOSED
                assert ct.closed
                assert b"Connection: close\r\n" in ct.out.rpartition(b"HTTP/1.1 ")[2]
            assert last_kind != "upgrade"
            assert last_answer not in ("switch", "garbage")
            # A close-delimited answer's end is not known, but to HEAD it has no body:
            # its head ends it (bytes that follow in the pool get the connection dropped).
            assert last_answer != "eof" or last_kind == "head"

    for kind, answer, cut, acut, early in exchanges:
        if state_of(client) != State.IDLE or up.state != 1:
            break  # the connection (or its backend) is gone: nothing more to serve
        data, raw = REQUESTS[kind], ANSWERS[answer]
        cut, acut = cut % (len(data) + 1), acut % (len(raw) + 1)
        client.data_received(data[:cut])
        check(kind, answer)
        fed_early = early and up.client is not None
        if fed_early:
            up.data_received(raw[:acut])
            check(kind, answer)
        if data[cut:] and state_of(client) != State.CLOSED:
            client.data_received(data[cut:])
            check(kind, answer)
        for part in (raw[acut:],) if fed_early else (raw[:acut], raw[acut:]):
            if part and up.client is not None:
                up.data_received(part)
                check(kind, answer)
        if up.client is not None and up.state == 2 and up.machine.got_response:
            # Still BUSY after an answer began: the backend closes. (Closing before any
            # answer would redial, which needs an event loop.)
            up.connection_lost(None)
            check(kind, answer)
    client.connection_lost(None)
    assert state_of(client) == State.CLOSED


# -- the one writer per direction -----------------------------------------------------------


def test_tunnel_bytes_go_both_ways_after_the_101() -> None:
    h = Harness()
    up, up_out = h.idle_backend()
    client, ct = h.client()
    client.data_received(REQUESTS["upgrade"])
    up.data_received(SWITCHED)
    sent = len(up_out.out)
    client.data_received(b"ping")
    up.data_received(b"pong")
    assert up_out.out[sent:] == b"ping"
    assert ct.out.endswith(b"\r\n\r\npong")
    assert state_of(client) == State.TUNNEL
    client.connection_lost(None)
    h.close()


def test_a_close_delimited_answer_ends_with_the_last_chunk_when_the_backend_closes() -> None:
    h = Harness()
    up, _ = h.idle_backend()
    client, ct = h.client()
    client.data_received(REQUESTS["get"])
    up.data_received(ANSWERS["eof"])
    assert ct.out.endswith(b"d\r\nuntil the end\r\n")  # re-chunked for the HTTP/1.1 client
    up.connection_lost(None)
    assert ct.out.endswith(b"d\r\nuntil the end\r\n0\r\n\r\n")
    assert state_of(client) == State.IDLE  # the client's connection goes on
    client.connection_lost(None)
    h.close()


HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["get", "head", "post", "chunked"]), min_size=1, max_size=5),
    st.booleans(),  # an upgrade request last
    st.integers(min_value=0, max_value=400),  # where the client's bytes are cut in two
)
def test_pipelined_requests_are_sent_and_answered_one_at_a_time_in_order(
    kinds: list[str], upgrade_last: bool, cut: int
) -> None:
    """Requests pipelined in one read (cut anywhere): each reaches the backend only once
    the answer before it is out, the answers reach the client in order on a connection
    that stays open, and an upgrade request last becomes a tunnel at its own 101."""
    order = kinds + (["upgrade"] if upgrade_last else [])
    data = b"".join(REQUESTS[k] for k in order)
    h = Harness()
    try:
        up, up_out = h.idle_backend()
        client, ct = h.client()
        cut %= len(data) + 1
        for part in (data[:cut], data[cut:]):
            client.data_received(part)
        answered = 0
        while up.client is client and up_out.out.count(b" HTTP/1.1\r\n") > answered:
            assert up_out.out.count(b" HTTP/1.1\r\n") == answered + 1  # one at a time
            kind = order[answered]
            up.data_received({"upgrade": SWITCHED, "head": HEAD_OK}.get(kind, OK))
            answered += 1
        assert answered == len(order)
        assert ct.out.count(b"HTTP/1.1 200 OK\r\n") == len(kinds)
        assert not ct.closed
        if upgrade_last:
            assert state_of(client) == State.TUNNEL
            assert ct.out.endswith(b"\r\n\r\n")  # the 101's head, last
        else:
            assert state_of(client) == State.IDLE
        client.connection_lost(None)
    finally:
        h.close()
