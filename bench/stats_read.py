"""What a proxy's ``GET /v1/stats`` costs for the counting fields, at read time.

``python -m bench stats_read [--sessions N] [--backends B]``: a session book holding N
header sessions (default 1 000 000) spread over B backends (default 20), as a busy
proxy's tables hold them; then the read side that ``GET /v1/stats`` and ``/metrics``
run on the event loop: the per-backend bottom-k sketches (``SessionBook.sketches``) and
a Draining backend's ``drainLive`` (``SessionBook.drain_live``), best and median of five
reads, and the JSON size of the sketches. Nothing of this runs per request: the
per-request cost is ``python -m bench engine_cpu``'s, before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from limpet.affinity import AffinitySettings, AffinityType, BackendId
from limpet.proxy.session.sessions import SKETCH_K, SessionBook

T0 = 1_800_000_000.0


def _book(sessions: int, backends: int) -> SessionBook:
    book = SessionBook(capacity=sessions, epoch=T0 - 1)
    affinity = AffinitySettings(type=AffinityType.HEADER, header_name="x-user")
    rng = random.Random(1)
    ids = [BackendId(f"b{i}") for i in range(backends)]
    for n in range(sessions):
        # Seen over the last 100 s, so a 2 s drain window holds about 2 % of them.
        wall = T0 + 100.0 * n / sessions
        book.track(AffinityType.HEADER, rng.getrandbits(64), ids[n % backends], wall, affinity)
    return book


def _ms(samples: list[float]) -> str:
    return f"{1e3 * min(samples):7.2f} ms best, {1e3 * statistics.median(samples):7.2f} ms median"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stats_read")
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--backends", type=int, default=20)
    args = parser.parse_args(argv)
    book = _book(args.sessions, args.backends)
    sketch_s: list[float] = []
    live_s: list[float] = []
    sketches: dict[int, list[int]] = {}
    for _ in range(5):
        t0 = time.perf_counter()
        sketches = book.sketches()
        t1 = time.perf_counter()
        book.drain_live(T0 + 100, min_idle=1.0, cookie_step=1, companion_step=None)
        live_s.append(time.perf_counter() - t1)
        sketch_s.append(t1 - t0)
    body = {
        str(b): {"k": SKETCH_K, "hashes": [f"{h:016x}" for h in hs]} for b, hs in sketches.items()
    }
    size = len(json.dumps(body, separators=(",", ":")))
    print(f"{args.sessions} sessions over {args.backends} backends, k = {SKETCH_K}")
    print(f"sketches of every backend   {_ms(sketch_s)}")
    print(f"drainLive of every backend  {_ms(live_s)}")
    print(f"sketch JSON                 {size / args.backends / 1000:.1f} kB a backend")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
