"""process/gc_tuning.py: start-up's objects frozen, thresholds from the settings.

:func:`settle` changes the whole interpreter's collector, so it runs in a child
process here; the functional tests start the real ``limpet proxy``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from limpet.proxy.settings import ProxySettings

from ..conftest import Proxies, _env

CHILD = r"""
import gc, json, sys, weakref
from limpet.proxy.process.gc_tuning import settle
from limpet.proxy.settings import ProxySettings

class Node:
    pass

kept = [Node() for _ in range(100)]      # alive at start-up: frozen
a, b = Node(), Node()
a.other, b.other = b, a                   # start-up garbage in a cycle: freed, not frozen
gone = weakref.ref(a)
del a, b
settings = ProxySettings.from_json(sys.argv[1])
frozen = settle(settings)
tracked = {id(o) for o in gc.get_objects()}
print(json.dumps({
    "frozen": frozen,
    "freeze_count": gc.get_freeze_count(),
    "threshold": gc.get_threshold(),
    "kept_tracked": sum(id(n) in tracked for n in kept),
    "cycle_freed": gone() is None,
}))
"""


def _settle_in_child(settings: ProxySettings) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, settings.to_json()],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=True,
    )
    got: dict[str, object] = json.loads(out.stdout)
    return got


def test_settle_freezes_start_up_and_frees_its_garbage() -> None:
    got = _settle_in_child(ProxySettings())
    assert got["kept_tracked"] == 0  # the collector no longer walks them
    assert got["cycle_freed"] is True
    assert isinstance(got["frozen"], int)
    assert got["frozen"] > 100
    assert got["freeze_count"] == got["frozen"]
    assert got["threshold"] == [700, 10, 10]  # Python's, untouched


def test_settle_without_freeze_sets_only_the_thresholds() -> None:
    got = _settle_in_child(ProxySettings(gc_freeze=False, gc_threshold=(5000, 20, 30)))
    assert got["frozen"] == 0
    assert got["freeze_count"] == 0
    assert got["kept_tracked"] == 100
    assert got["threshold"] == [5000, 20, 30]


def test_threshold_survives_the_workers_json() -> None:
    s = ProxySettings(gc_freeze=False, gc_threshold=(10_000, 10, 10))
    back = ProxySettings.from_json(s.to_json())
    assert back == s
    assert back.gc_threshold == (10_000, 10, 10)


@pytest.mark.parametrize("bad", [(0, 10, 10), (700, -1, 10), (700, 10)])
def test_bad_threshold_is_refused(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="gc_threshold"):
        ProxySettings(gc_threshold=bad)  # type: ignore[arg-type]


def _froze_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "garbage collector: froze" in line]


@pytest.mark.parametrize(("args", "lines"), [((), 1), (("--no-gc-freeze",), 0)])
def test_proxy_freezes_after_start_up(proxy: Proxies, args: tuple[str, ...], lines: int) -> None:
    p = proxy.start("--backend", "a=127.0.0.1:9", *args)
    assert p.stats()["planVersion"] is not None
    assert len(_froze_lines(p.log.read_text())) == lines


def test_every_worker_freezes(proxy: Proxies) -> None:
    p = proxy.start("--backend", "a=127.0.0.1:9", "--workers", "2", "--gc-threshold", "2000,10,10")
    assert p.stats()["planVersion"] is not None
    assert len(_froze_lines(p.log.read_text())) == 2
