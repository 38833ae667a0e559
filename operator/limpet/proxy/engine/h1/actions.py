"""What the engine decides, as action values: the facts of an exchange in, one action out.
No I/O.

Data flow: the shell (:class:`~limpet.proxy.engine.exchange.Exchange` and
:class:`~limpet.proxy.engine.client.ClientConnection`) and the backend side's
:class:`~limpet.proxy.engine.h1.response.ResponseMachine` pass the facts they hold (the
:mod:`~limpet.proxy.engine.h1.connection` state, keep-alive, whether the request was
retried, whether a pooled connection was found, ...) to one function here, get one
action back and do it: dial or bind a connection (the pool), ask the router (the session
layer), write a head, read the next request, hold bytes for a 101, write the proxy's own
answer, or abort. The machine's decision on its connection (:func:`after_answer`) comes
out as its ``keep``, which :class:`~limpet.proxy.engine.upstream.UpstreamConnection`
carries out (pool or close). The functions are pure and cheap: the hot path calls them
natively (compiled together), with bools and ints.

Actions on a request that succeeds, one ``IntEnum`` per decision: :class:`Routing`
(send, await the store, 503), :class:`Connect` (bind a pooled connection or dial),
:class:`Bind` (how the head leaves), :class:`Dialled` (a dial's connection is bound or
kept spare), :class:`Reuse` (pool a backend connection or close it), :class:`Next`
(after the exchange: go on, read the next request, serve a queued one, close),
:class:`Upgrade` (hold for the 101, or close) and :class:`Interim` (a 1xx head: relay,
drop, switch, or a broken answer). The hot path compares the members' values as plain
ints (module constants: ``ROUTE_SEND``, ...), as it does the connection's states, so no
action is ever allocated or looked up on a class.

Actions on a failure: :class:`Do` (``NOTHING``, ``REDIAL``, ``REROUTE``, ``ABORT``) and
:class:`Fail` (answer with an error status, and perhaps tell the router the backend
failed). Both are immutable; none is made on the way of a request that succeeds.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NamedTuple

from limpet.proxy.engine.h1.connection import (
    ANSWER_OUT,
    ANSWER_STARTED,
    IDLE,
    REQUEST_DONE,
    WAITING,
)
from limpet.proxy.engine.port import Route


class Do(IntEnum):
    """An action without arguments."""

    NOTHING = 0  # the answer is out already, or the connection is closed
    REDIAL = 1  # dial the same backend afresh (its pooled connection was stale)
    REROUTE = 2  # ask the router for another backend (a connect failure, nothing sent)
    ABORT = 3  # cut the client short: its answer has started, no error can follow


class Fail(NamedTuple):
    """Answer the request with the proxy's own error."""

    status: int
    backend_failed: bool = False  # tell the router (passive health) the backend failed
    close: bool = False  # and close the client connection after it, whatever keep-alive says


Action = Do | Fail

CLOSING_STATUSES: Final = frozenset({400, 405, 501, 505})
"""The proxy's answers after which the client connection always closes: the request
was not understood, so where the next one starts is not known either."""


def after_connect_failure(*, retried: bool) -> Action:
    """Dialling the routed backend failed, before any byte was sent: try another backend
    once (the router marks this one failed), then 502."""
    return Fail(502, backend_failed=True) if retried else Do.REROUTE


def after_upstream_closed(
    state: int, *, redialled: bool, idempotent: bool, body_sent: bool, reset: bool
) -> Action:
    """The backend connection closed before any byte of the answer. Usually a pooled
    connection the backend had just closed: an idempotent request whose body did not
    start is dialled afresh once (if the backend is really gone, that dial fails over).
    Anything else is a 502; a reset (not a clean close) counts against the backend."""
    if ANSWER_OUT[state]:
        return Do.NOTHING
    if not redialled and idempotent and not body_sent:
        return Do.REDIAL
    return Fail(502, backend_failed=reset)


def after_upstream_error(state: int, status: int) -> Action:
    """The backend's answer is not HTTP (502) or overdue (504): answer so if nothing of
    the answer has left yet, else cut the client short (nothing once it is out)."""
    if ANSWER_STARTED[state]:
        return Do.ABORT
    if ANSWER_OUT[state]:
        return Do.NOTHING
    return Fail(status, close=True)


def answer_closes(
    state: int, status: int, *, keep_alive: bool, has_body: bool, upgrade: bool
) -> bool:
    """Whether the client connection closes after the proxy's own answer: when the client
    or an earlier decision asked for it, after a request that was not understood, and
    when the request's body (or an upgrade's bytes) would still be on the way."""
    return (
        not keep_alive
        or status in CLOSING_STATUSES
        or (not REQUEST_DONE[state] and (has_body or upgrade))
    )


# -- the decisions of a request that succeeds ---------------------------------------------


class Routing(IntEnum):
    """What to do with the router's answer to a request head."""

    SEND = 0  # a Route: build the head, then a pooled connection or a dial (Connect)
    AWAIT = 1  # a PendingRoute: hold the body (bounded), await the shared store, then SEND
    NO_BACKEND = 2  # None: no backend can take the request, answer 503


class Connect(IntEnum):
    """How a routed request gets its backend connection."""

    BIND = 0  # the pool had an idle connection to the backend: bind it (Bind)
    DIAL = 1  # none: hold the body (bounded) and dial a new one (Dialled)


class Bind(IntEnum):
    """How the request head leaves once a connection is bound to the exchange."""

    HEAD = 0  # no body: the head alone, written at once (the hot path's one write)
    WITH_READ = 1  # its body bytes are in the read being parsed: head and body together
    HELD = 2  # after awaiting the store or a dial: the head, then what was held meanwhile


class Dialled(IntEnum):
    """What a newly dialled backend connection is for."""

    BIND = 0  # the request still waits for it
    SPARE = 1  # nobody waits any more (answered, closed, or routed elsewhere): pool it


class Reuse(IntEnum):
    """What becomes of a backend connection whose answer is complete."""

    POOL = 0  # back to the pool, for any client's next request
    CLOSE = 1  # closed: it is not known to be at the start of a message


class Next(IntEnum):
    """What the client connection does once its exchange may have ended."""

    CONTINUE = 0  # the exchange goes on (an answer or the rest of a body is due)
    READ = 1  # complete: wait for the next request (the idle timeout runs)
    SERVE_QUEUED = 2  # complete: start the pipelined request parsed meanwhile
    REFUSE_QUEUED = 3  # complete: answer the bad bytes that followed it, and close
    CLOSE = 4  # close the connection once the answer is out


class Upgrade(IntEnum):
    """What follows an upgrade request's head on the client connection."""

    SWITCH = 0  # hold the bytes that follow until the backend answers (SWITCHING)
    CLOSE = 1  # answered already: nothing after the head can be read, close


class Interim(IntEnum):
    """What to do with a 1xx head from the backend."""

    RELAY = 0  # an HTTP/1.1 client gets it (100 Continue, 103 Early Hints)
    DROP = 1  # an HTTP/1.0 client does not know 1xx answers
    SWITCH = 2  # 101 to an upgrade request: relay it, then a tunnel
    BROKEN = 3  # 101 to a request that asked for no upgrade: not an answer to it


# The members' values as literal module constants, for the shell's comparisons (see the
# module): compiled, a literal Final is inlined where a computed one (``Next.READ.value``)
# is a static read and checked at each use. tests/proxy/engine/test_h1_actions_flow.py
# checks that they agree with the members.
ROUTE_SEND: Final = 0
ROUTE_AWAIT: Final = 1
ROUTE_NO_BACKEND: Final = 2
CONNECT_BIND: Final = 0
CONNECT_DIAL: Final = 1
BIND_HEAD: Final = 0
BIND_WITH_READ: Final = 1
BIND_HELD: Final = 2
DIALLED_BIND: Final = 0
DIALLED_SPARE: Final = 1
REUSE_POOL: Final = 0
REUSE_CLOSE: Final = 1
NEXT_CONTINUE: Final = 0
NEXT_READ: Final = 1
NEXT_SERVE_QUEUED: Final = 2
NEXT_REFUSE_QUEUED: Final = 3
NEXT_CLOSE: Final = 4
UPGRADE_SWITCH: Final = 0
UPGRADE_CLOSE: Final = 1
INTERIM_RELAY: Final = 0
INTERIM_DROP: Final = 1
INTERIM_SWITCH: Final = 2
INTERIM_BROKEN: Final = 3


def after_routing(route: object) -> int:
    """The router answered a request head (``dispatch``, or ``redispatch`` after a connect
    failure): a :class:`~limpet.proxy.engine.port.Route` is sent, ``None`` is a 503,
    anything else is a ``PendingRoute`` to await. Returns a :class:`Routing` value."""
    if route is None:
        return ROUTE_NO_BACKEND
    return ROUTE_SEND if type(route) is Route else ROUTE_AWAIT


def connect(*, pooled: bool) -> int:
    """A routed request needs a connection: bind the pool's idle one to the backend, else
    dial (:class:`Connect`)."""
    return CONNECT_BIND if pooled else CONNECT_DIAL


def on_bind(*, holding: bool, feeding: bool, has_body: bool) -> int:
    """A connection is bound to the exchange: how its head leaves (:class:`Bind`). Held
    bytes (routing through the store, dialling) go after the head; a head whose body
    bytes come in the read being parsed waits for them (one writev at the read's end);
    else the head leaves alone, at once."""
    if holding:
        return BIND_HELD
    return BIND_WITH_READ if feeding and has_body else BIND_HEAD


def after_dial(state: int, *, current: bool) -> int:
    """A dial succeeded: bind it if the exchange still waits for this route (``current``)
    and no answer has gone out, else keep it spare in the pool (:class:`Dialled`)."""
    return DIALLED_BIND if current and not ANSWER_OUT[state] else DIALLED_SPARE


def after_answer(
    *, request_done: bool, framed: bool, keep_alive: bool, upgrade: bool, in_step: bool
) -> int:
    """The backend's answer is complete (:class:`Reuse`): its connection is pooled only if
    the request went out whole (``request_done``: else the backend may still wait for the
    body), the answer's length was known (``framed``: not ended by the close), the backend
    keeps the connection (``keep_alive``), no upgrade was asked for (the backend may be in
    another protocol, or wait for one) and nothing followed the answer (``in_step``: bytes
    beyond it, a body after a HEAD answer). Anything else is closed."""
    if request_done and framed and keep_alive and in_step and not upgrade:
        return REUSE_POOL
    return REUSE_CLOSE


def after_exchange(state: int, *, keep_alive: bool, queued: bool, refused: bool) -> int:
    """The client connection's exchange moved (its request or its answer ended; ``state``
    is the state after that event): what the connection does next (:class:`Next`).

    While an answer is due, it goes on. Once the answer is out, a connection without
    keep-alive closes; one still reading the request's body (``DRAINING``) goes on. Only
    from ``IDLE`` is a next request read: the one queued while pipelining first
    (``queued``), else the bad bytes that followed the last one are answered
    (``refused``: an error deferred until this answer was out), else the next read."""
    if not ANSWER_OUT[state]:
        return NEXT_CONTINUE
    if not keep_alive:
        return NEXT_CLOSE
    if state != IDLE:
        return NEXT_CONTINUE
    if queued:
        return NEXT_SERVE_QUEUED
    return NEXT_REFUSE_QUEUED if refused else NEXT_READ


def after_upgrade_head(state: int) -> int:
    """An upgrade request's head is the one in flight (:class:`Upgrade`): hold what follows
    for the backend's answer while the request waits for it (``WAITING``); if the proxy
    answered it already, nothing after the head can be read as HTTP/1.1: close."""
    return UPGRADE_SWITCH if state == WAITING else UPGRADE_CLOSE


def after_interim(status: int, *, upgrade: bool, http11: bool) -> int:
    """A 1xx head from the backend (:class:`Interim`): a 101 switches protocols only after
    an upgrade request (else the answer is broken); any other 1xx goes to HTTP/1.1
    clients only, and the final head follows."""
    if status == 101:
        return INTERIM_SWITCH if upgrade else INTERIM_BROKEN
    return INTERIM_RELAY if http11 else INTERIM_DROP
