"""The cyclic garbage collector of a proxy process: start-up's objects are frozen.

Data flow: :func:`settle` runs once per serving process (the single process in
``app.serve``, each worker in ``workers``), after start-up and before the first
request: modules imported, the first plan compiled, the listeners open. It sets the
collector's thresholds from :class:`~limpet.proxy.settings.ProxySettings` and, with
``gc_freeze`` (the default), collects once and moves every surviving object into the
permanent generation (:func:`gc.freeze`).

Why: a full collection walks every tracked object, and start-up leaves about 60 000 of
them (the imported modules, aiohttp, prometheus-client, numpy, the plan), none of which
the request path frees. Walking them took a full collection about 45 ms on the busy
machine; frozen, the walk covers only what was made since (docs/proxy.md,
"Performance"), so the pause that lands on one request's latency shrinks with it.
Frozen objects are still freed by reference counting; only a reference cycle among them
would be kept, and start-up's objects live as long as the process anyway.

Concurrency: called on the event loop's thread before it serves; nothing else runs.
"""

from __future__ import annotations

import gc
import logging

from limpet.proxy.settings import ProxySettings

log = logging.getLogger("limpet.proxy.process.gc_tuning")


def settle(settings: ProxySettings) -> int:
    """Apply the collector settings; returns how many objects were frozen."""
    if settings.gc_threshold is not None:
        gc.set_threshold(*settings.gc_threshold)
    if not settings.gc_freeze:
        return 0
    gc.collect()  # start-up's garbage is freed, not frozen
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: froze %d objects left by start-up", frozen)
    return frozen
