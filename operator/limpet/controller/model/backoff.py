"""Exponential backoff with jitter: the one retry pacing of the operator.

Data flow: a retrying loop holds a :class:`Backoff` made from a
:class:`~.settings.BackoffSettings`, asks :meth:`Backoff.next_delay` after each failure
and calls :meth:`Backoff.reset` after a success; :func:`delay` gives the same pacing from
an attempt count (kopf passes a daemon's retry count). The delay of attempt ``n`` (from
0) is ``initial * 2**n``, capped at ``maximum``, times a uniform jitter in ``[0.5, 1.5)``,
so that many watches that failed together do not retry in lockstep.

Users: the watches (:mod:`limpet.controller.kube.informer`), the pusher's workers, the
reconciler's loop after an API error, and the kopf daemon that restarts a crashed
reconciler.

Pure: the randomness is an argument (``random.random`` unless a test passes its own).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from limpet.controller.model.settings import BackoffSettings

Random = Callable[[], float]


def delay(settings: BackoffSettings, attempt: int, *, rng: Random = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (0: the first retry)."""
    base = settings.initial * 2.0 ** min(attempt, 64)
    return min(base, settings.maximum) * (0.5 + rng())


class Backoff:
    """Consecutive failures of one loop, and the delay before its next try."""

    def __init__(self, settings: BackoffSettings, *, rng: Random = random.random) -> None:
        self._settings = settings
        self._rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        """The delay after one more failure."""
        seconds = delay(self._settings, self.failures, rng=self._rng)
        self.failures += 1
        return seconds

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.failures = 0
