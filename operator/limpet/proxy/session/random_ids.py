"""Random session ids from the operating system's CSPRNG, drawn in batches.

Data flow: the router takes one id per new cookie session (:meth:`RandomIds.take`); the
source reads ``size x batch`` bytes from :func:`os.urandom` at a time and hands them out
in order, so a new session costs a slice instead of a ``getrandom`` system call. Every
byte is used once. The ids are as unpredictable as ``os.urandom``'s own: they are its
bytes, unchanged.

Concurrency: one source per router, used from the event loop only. A forked child
discards the parent's unused bytes, so two processes never hand out the same ids (the
proxy's workers are separate interpreters anyway): the first source made in a process
registers one ``os.register_at_fork`` hook that counts forks, and a source whose batch
was read before the latest fork reads a new one. Compiled with mypyc (a native class
cannot be weakly referenced, so no source registers a hook of its own).
"""

from __future__ import annotations

import os
from typing import Final

_FORKS: Final = [0]
"""Forks of this process so far, as its own child sees them (the hook counts in the child)."""
_HOOKED: Final = [False]


class RandomIds:
    """Fixed-size random ids, ``batch`` of them per :func:`os.urandom` call."""

    __slots__ = ("_at", "_buffer", "_chunk", "_forks", "size")

    def __init__(self, *, size: int, batch: int = 256) -> None:
        if size < 1 or batch < 1:
            raise ValueError("random id size and batch must be positive")
        self.size = size
        self._chunk = size * batch
        self._buffer = b""
        self._at = 0
        self._forks = _FORKS[0]
        if not _HOOKED[0]:
            _HOOKED[0] = True
            os.register_at_fork(after_in_child=_forked)

    def take(self) -> bytes:
        """The next id: ``size`` bytes never handed out before (in any process)."""
        at = self._at
        end = at + self.size
        if end > len(self._buffer) or self._forks != _FORKS[0]:
            self._buffer = os.urandom(self._chunk)
            self._forks = _FORKS[0]
            at, end = 0, self.size
        self._at = end
        return self._buffer[at:end]

    def discard(self) -> None:
        """Forget the unused bytes (the next :meth:`take` reads fresh ones)."""
        self._buffer = b""
        self._at = 0


def _forked() -> None:
    _FORKS[0] += 1
