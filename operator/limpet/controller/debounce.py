"""Turn a stream of "something changed" pokes into a few "plan now" wake-ups.

Data flow: watch callbacks call :meth:`Debouncer.poke` (synchronous, cheap); the
reconciler loops on :meth:`Debouncer.wait`, which returns ``True`` when it is time to
plan the pending changes, or ``False`` when its timeout (the planner's next deadline)
passed with nothing pending. The pacing rule is in
:class:`~limpet.controller.settings.DebounceSettings`: leading edge plus ``settle`` for a
lone change, an exponentially widening interval while changes keep arriving faster than
the interval, and a reset once they stop.

Concurrency: one event loop; any number of pokers, one waiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from limpet.controller.model.settings import DebounceSettings


class Debouncer:
    def __init__(
        self, settings: DebounceSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._event = asyncio.Event()
        self._first_poke: float | None = None
        self._last_plan = -1e18
        self.interval = settings.min_interval
        self.pokes = 0

    @property
    def pending(self) -> bool:
        return self._first_poke is not None

    def poke(self) -> None:
        self.pokes += 1
        if self._first_poke is None:
            self._first_poke = self._clock()
        self._event.set()

    async def wait(self, deadline_in: float | None) -> bool:
        """Wait for pending changes (paced); ``False`` if ``deadline_in`` s pass without any."""
        if self._first_poke is None:
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout=deadline_in)
            except TimeoutError:
                return False
        first = self._first_poke
        assert first is not None
        s = self._settings
        since_last = first - self._last_plan
        if since_last < self.interval:
            fire_at = self._last_plan + self.interval
            self.interval = min(self.interval * 2, s.max_interval)
        else:
            if since_last > 2 * self.interval:
                self.interval = s.min_interval
            fire_at = first + s.settle
        delay = fire_at - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        self._first_poke = None
        self._event.clear()
        self._last_plan = self._clock()
        return True
