"""Waiting for the cluster's controllers: poll until a probe gives a truthy value."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client as k8s

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None],
    *,
    within: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value (returned) or fail after ``within``
    s, naming ``what`` and the last value or error seen. A 404 counts as "not yet"."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (AssertionError, KeyError) as exc:
            last = exc
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            last = f"404 {exc.reason}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}: {last!r}")
        time.sleep(interval)
