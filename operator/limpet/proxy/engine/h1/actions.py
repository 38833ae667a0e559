"""What the client side decides when something goes wrong, as action values. No I/O.

Data flow: the shell (:class:`~limpet.proxy.engine.exchange.Exchange`) reports a failure
with the facts of the exchange (its :mod:`~limpet.proxy.engine.h1.connection` state, and
whether it was retried, redialled, idempotent, sent body bytes), gets back one action and
does it: dials (the pool), asks the router again (the session layer), writes the proxy's
own answer, or aborts the client connection. The functions here are pure; the shell
keeps the I/O, the timers and the calls to the session layer.

Actions: :class:`Do` (``NOTHING``, ``REDIAL``, ``REROUTE``, ``ABORT``) and :class:`Fail`
(answer with an error status, and perhaps tell the router the backend failed). Both are
immutable; no action is allocated on the way of a request that succeeds.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NamedTuple

from limpet.proxy.engine.h1.connection import ANSWER_OUT, ANSWER_STARTED, REQUEST_DONE


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
