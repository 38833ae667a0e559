"""The client side's connection state machine: one state per client connection, every
transition in one table. No I/O.

A client connection serves one exchange (a request and its answer) at a time. Its state
says how far both halves of that exchange have got, and what the connection does with
the bytes it reads; the shell (:class:`~limpet.proxy.engine.exchange.Exchange` and
:class:`~limpet.proxy.engine.client.ClientConnection`) fires an :class:`Event` whenever
something happens and keeps the state it gets back. The backend side's
:class:`~limpet.proxy.engine.h1.response.ResponseMachine` fires the answer's events on
the same state (it holds the exchange as ``ExchangeFacts``).

Data flow: ``conn.state = step(conn.state, event)``: :func:`step` looks the pair up in
the table built from :data:`TRANSITIONS` (two tuple subscripts; the shell holds the
state as the plain int value of its :class:`State`; for the four events of every
exchange it reads the table's columns, ``AFTER_*``, inline); a (state, event) pair
that is not in it raises :class:`InvalidTransition` (a bug in the engine, never
ignored). What the shell needs to know of a state is a tuple of flags indexed by state
(``REQUEST_DONE[state]``), so a question costs one subscript.

The states (the product of "request complete?" and "answer started/finished?", plus the
connection's own ends):

============  ==================  ================  ======================================
state         request             answer            reads
============  ==================  ================  ======================================
IDLE          none in flight      none              the next request head
RECEIVING     head in, body due   not started       request body
WAITING       complete            due               (pipelined requests, queued)
DUPLEX        body due            streaming         request body
RESPONDING    complete            streaming         (pipelined requests, queued)
DRAINING      body due            complete          request body, dropped
SWITCHING     upgrade, complete   due               raw bytes, held until the answer
REFUSED       upgrade, complete   not 101,          raw bytes, held (closes at its end)
                                  streaming
TUNNEL        (101 answered)      (101 answered)    raw bytes, piped both ways
CLOSED        -                   -                 nothing
============  ==================  ================  ======================================
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NoReturn


class State(IntEnum):
    """Where a client connection's exchange stands (the module's table)."""

    IDLE = 0
    RECEIVING = 1
    WAITING = 2
    DUPLEX = 3
    RESPONDING = 4
    DRAINING = 5
    SWITCHING = 6
    REFUSED = 7
    TUNNEL = 8
    CLOSED = 9


class Event(IntEnum):
    """What happens to a client connection's exchange."""

    REQUEST = 0  # a request head is complete: the exchange starts
    REQUEST_END = 1  # the request (body and trailers) is complete
    UPGRADE = 2  # an upgrade request's head ended HTTP/1.1 on this connection
    ANSWER = 3  # the final answer's head is on its way to the client
    ANSWER_UNSENT = 4  # ... after all not: the backend failed before it left
    ANSWER_END = 5  # the answer is complete
    SWITCH = 6  # the backend answered 101: a raw tunnel from now on
    CLOSE = 7  # the connection closes (or is aborted, or was lost)


# The members' values as plain module constants: the shell keeps its state as a plain
# int and reads these. An attribute of an enum class costs a hundred nanoseconds (a
# module global, a few), and CPython's specialised tuple subscripts and comparisons take
# exact ints only (an IntEnum member cost about 4 % of a GET's instructions).
IDLE: Final = State.IDLE.value
RECEIVING: Final = State.RECEIVING.value
WAITING: Final = State.WAITING.value
DUPLEX: Final = State.DUPLEX.value
RESPONDING: Final = State.RESPONDING.value
DRAINING: Final = State.DRAINING.value
SWITCHING: Final = State.SWITCHING.value
REFUSED: Final = State.REFUSED.value
TUNNEL: Final = State.TUNNEL.value
CLOSED: Final = State.CLOSED.value
REQUEST: Final = Event.REQUEST.value
REQUEST_END: Final = Event.REQUEST_END.value
UPGRADE: Final = Event.UPGRADE.value
ANSWER: Final = Event.ANSWER.value
ANSWER_UNSENT: Final = Event.ANSWER_UNSENT.value
ANSWER_END: Final = Event.ANSWER_END.value
SWITCH: Final = Event.SWITCH.value
CLOSE: Final = Event.CLOSE.value


class InvalidTransition(Exception):  # not RuntimeError: mypyc cannot compile that base
    """An event that cannot happen in the connection's state: a bug in the engine."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"client connection: event {event.name} in state {state.name}")
        self.state = state
        self.event = event


TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    # The request half.
    (State.IDLE, Event.REQUEST): State.RECEIVING,
    (State.RECEIVING, Event.REQUEST_END): State.WAITING,
    (State.DUPLEX, Event.REQUEST_END): State.RESPONDING,
    (State.DRAINING, Event.REQUEST_END): State.IDLE,  # the exchange is complete
    (State.WAITING, Event.UPGRADE): State.SWITCHING,
    # The answer half.
    (State.RECEIVING, Event.ANSWER): State.DUPLEX,
    (State.WAITING, Event.ANSWER): State.RESPONDING,
    (State.SWITCHING, Event.ANSWER): State.REFUSED,
    (State.DUPLEX, Event.ANSWER_UNSENT): State.RECEIVING,
    (State.RESPONDING, Event.ANSWER_UNSENT): State.WAITING,
    (State.REFUSED, Event.ANSWER_UNSENT): State.SWITCHING,
    (State.DUPLEX, Event.ANSWER_END): State.DRAINING,
    (State.RESPONDING, Event.ANSWER_END): State.IDLE,  # the exchange is complete
    (State.REFUSED, Event.ANSWER_END): State.IDLE,  # (keep-alive is off: the connection closes)
    (State.SWITCHING, Event.SWITCH): State.TUNNEL,
    # The connection's end, from anywhere.
    **{(s, Event.CLOSE): State.CLOSED for s in State},
}
"""Every transition of the client connection; anything else is an
:class:`InvalidTransition`."""


_NEXT: Final[tuple[tuple[int, ...], ...]] = tuple(
    tuple(int(TRANSITIONS.get((s, e), -1)) for e in Event) for s in State
)


def step(state: int, event: int) -> int:
    """The state after ``event`` in ``state`` (values of :class:`State` and
    :class:`Event`); raises :class:`InvalidTransition` if the event cannot happen there."""
    nxt = _NEXT[state][event]
    if nxt < 0:
        invalid(state, event)
    return nxt


def invalid(state: int, event: int) -> NoReturn:
    """Raise the :class:`InvalidTransition` for ``event`` in ``state``."""
    raise InvalidTransition(State(state), Event(event))


def raise_if_invalid(exc: BaseException) -> None:
    """Re-raise the :class:`InvalidTransition` behind a parser error: httptools turns an
    exception in a callback into a parse error, and a bug in the engine must surface,
    never be read as a client's bad request (400) or a backend's garbage (502)."""
    if isinstance(exc.__context__, InvalidTransition):
        raise exc.__context__


def failure_behind(
    exc: BaseException, expected: tuple[type[BaseException], ...]
) -> Exception | None:
    """The exception behind a parser error that is none of the ``expected`` ones (the
    parser's own errors and the machine's signals): a bug behind the machine, such as
    the router's, which is neither the client's bad request nor the backend's garbage.
    ``None`` when there is none."""
    cause = exc.__context__
    if isinstance(cause, Exception) and not isinstance(cause, expected):
        return cause
    return None


# The four events of every exchange, as columns of the table: the hot path inlines what
# step does (``nxt = AFTER_REQUEST[state]``, then ``invalid`` if it is negative) to
# save a call per event, about 700 instructions each.
AFTER_REQUEST: Final = tuple(row[Event.REQUEST] for row in _NEXT)
AFTER_REQUEST_END: Final = tuple(row[Event.REQUEST_END] for row in _NEXT)
AFTER_ANSWER: Final = tuple(row[Event.ANSWER] for row in _NEXT)
AFTER_ANSWER_END: Final = tuple(row[Event.ANSWER_END] for row in _NEXT)


# What the shell asks of a state (tuples indexed by State: one subscript, no call).
REQUEST_DONE: Final[tuple[bool, ...]] = tuple(
    s in (State.WAITING, State.RESPONDING, State.SWITCHING, State.REFUSED) for s in State
)
"""The request of the exchange in flight is complete (its answer is not)."""
BODY_DUE: Final[tuple[bool, ...]] = tuple(s in (State.RECEIVING, State.DUPLEX) for s in State)
"""Request body bytes go to the backend."""
READING_BODY: Final[tuple[bool, ...]] = tuple(
    s in (State.RECEIVING, State.DUPLEX, State.DRAINING) for s in State
)
"""The request's body is still being read (forwarded, or dropped once answered)."""
ANSWER_STARTED: Final[tuple[bool, ...]] = tuple(
    s in (State.DUPLEX, State.RESPONDING, State.REFUSED) for s in State
)
"""The answer's head has left: an error can only cut the client short."""
ANSWER_OUT: Final[tuple[bool, ...]] = tuple(
    s in (State.IDLE, State.DRAINING, State.CLOSED) for s in State
)
"""No answer is due on this connection (answered, or closed)."""
HTTP: Final[tuple[bool, ...]] = tuple(s <= State.DRAINING for s in State)
"""The connection reads HTTP/1.1 requests (not held raw bytes, a tunnel, or nothing)."""
