"""Random session ids from the operating system's CSPRNG, drawn in batches.

Data flow: the router takes one id per new cookie session (:meth:`RandomIds.take`); the
source reads ``size x batch`` bytes from :func:`os.urandom` at a time and hands them out
in order, so a new session costs a slice instead of a ``getrandom`` system call. Every
byte is used once. The ids are as unpredictable as ``os.urandom``'s own: they are its
bytes, unchanged.

Concurrency: one source per router, used from the event loop only. A forked child
discards the parent's unused bytes (``os.register_at_fork``), so two processes never
hand out the same ids; the proxy's workers are separate interpreters anyway.
"""

from __future__ import annotations

import os
import weakref


class RandomIds:
    """Fixed-size random ids, ``batch`` of them per :func:`os.urandom` call."""

    __slots__ = ("__weakref__", "_at", "_buffer", "_chunk", "size")

    def __init__(self, *, size: int, batch: int = 256) -> None:
        if size < 1 or batch < 1:
            raise ValueError("random id size and batch must be positive")
        self.size = size
        self._chunk = size * batch
        self._buffer = b""
        self._at = 0
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _discard(ref()))

    def take(self) -> bytes:
        """The next id: ``size`` bytes never handed out before."""
        at = self._at
        end = at + self.size
        if end > len(self._buffer):
            self._buffer = os.urandom(self._chunk)
            at, end = 0, self.size
        self._at = end
        return self._buffer[at:end]

    def discard(self) -> None:
        """Forget the unused bytes (the next :meth:`take` reads fresh ones)."""
        self._buffer = b""
        self._at = 0


def _discard(ids: RandomIds | None) -> None:
    if ids is not None:
        ids.discard()
