"""Writes held until the event loop's turn ends, then made back to back.

Data flow: the exchange's two writers (``Exchange.flush_up`` towards a backend, with the
lone head of ``Exchange._bind``, and ``Exchange.flush_down`` towards the client) hand
their bytes to the server's :class:`WriteBatch` instead of the transport. The first
write of a turn of the loop schedules :meth:`WriteBatch.flush` with ``call_soon``, so it
runs once every callback of the turn's reads has run; it then writes everything in the
order it came. A transport is never closed, aborted or half-closed with bytes of its own
still held: those paths call :meth:`WriteBatch.flush_to` first, so what was written
before a close leaves before it, as it did when every write went out at once. A
transport that is already closing gets nothing (its own ``write`` would drop the bytes).

Why: uvloop writes at once, and on loopback (and a node's veth pairs) a write hands the
bytes to the peer's socket in the writer's own system call and wakes the peer if it
sleeps in ``epoll_wait``. Limpet, slower than its peers, woke them 0.3 to 0.6 times a
request, one wake-up (an inter-processor interrupt) at a time; written together, one
wake-up serves the whole turn (0.18 a request), and the peers answer in batches.
Measured in docs/proxy.md ("Writes batched per turn"): 9 to 13 % more requests a second,
p99 lower; at one request a turn the flush costs about 4 500 instructions a turn.

Concurrency: one batch per server, so per event loop; callbacks only. ``flush`` may run
a protocol's ``pause_writing`` (a transport's buffer passed its high-water mark), which
only pauses reading elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger(__name__)

Held = bytes | list[bytes]
"""One write: a buffer, or buffers for one ``writelines`` (one writev)."""


class Turn(Protocol):
    """What the batch needs of the event loop: run a callback once this turn's callbacks
    have run (``loop.call_soon``). Socket-free tests pass one that runs it at once, or
    when the test ends its turn."""

    def call_soon(self, callback: Callable[[], object], /) -> object: ...


class WriteBatch:
    """The writes of one turn of one event loop, in order (see the module)."""

    __slots__ = ("_armed", "_loop", "_pending")

    def __init__(self, loop: Turn) -> None:
        self._loop: Final = loop
        self._pending: list[tuple[asyncio.Transport, Held]] = []
        self._armed = False

    def write(self, transport: asyncio.Transport, data: Held) -> None:
        """Hold ``data`` for ``transport`` (the batch owns it: pass a list no one changes
        afterwards)."""
        self._pending.append((transport, data))
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self.flush)

    def take(self, transport: asyncio.Transport, out: list[bytes]) -> None:
        """Hold what ``out`` has for ``transport`` (one write, or one writev) and clear
        ``out``: a writer's buffer list, reused for its next bytes."""
        self.write(transport, out[0] if len(out) == 1 else out.copy())
        out.clear()

    def flush(self) -> None:
        """Write everything held, in order (the loop calls it once a turn)."""
        self._armed = False
        pending = self._pending
        if pending:
            self._pending = []
            for transport, data in pending:
                _send(transport, data)

    def flush_to(self, transport: asyncio.Transport) -> None:
        """Write what is held for ``transport`` now (before it is closed, aborted or
        half-closed); the other transports' bytes stay held."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        kept: list[tuple[asyncio.Transport, Held]] = []
        for item in pending:
            if item[0] is transport:
                _send(transport, item[1])
            else:
                kept.append(item)
        # A write made meanwhile (a pause_writing callback's) comes after the kept ones.
        self._pending = kept + self._pending if self._pending else kept

    def held(self) -> int:
        """How many writes wait (for tests)."""
        return len(self._pending)


def _send(transport: asyncio.Transport, data: Held) -> None:
    if transport.is_closing():
        return
    try:
        if isinstance(data, bytes):
            transport.write(data)
        else:
            transport.writelines(data)
    except Exception:  # one broken transport must not keep the others' bytes
        log.exception("a held write failed; the connection is dropped")
        transport.abort()
