"""Benchmark of the affinity core: disruption, balance and speed (issue 3).

Disruption: the fraction of keys whose backend changes when one backend joins (+1) or
leaves (-1) a set of N equal backends, against the optimum (1/(N+1) and 1/N), for
limpet's slot table, modulo hashing, a ketama ring with 160 points per server (nginx
``hash ... consistent``) and a from-scratch Maglev rebuild. Balance: the largest
backend's share over the mean. Speed: table builds, one slot lookup, one decision.

Run: ``python -m bench affinity [--keys K]``. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
import timeit
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import numpy.typing as npt

from limpet.affinity import (
    DEFAULT_SIZE,
    Backend,
    BackendId,
    CookieKey,
    Plan,
    RebalanceSchedule,
    Router,
    Session,
    SlotTable,
    cookie_key,
    decide,
    key_hash,
    slot_of_hash,
)
from limpet.affinity.slottable import bound_eps, build_index, recommended_size

Keys = npt.NDArray[np.uint64]
Assign = Callable[[Sequence[str], Keys], npt.NDArray[np.intp]]
MAGLEV_SIZE = 65537
RING_POINTS = 160


def _h32(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def limpet_at(size: int | None) -> Assign:
    def assign(members: Sequence[str], keys: Keys) -> npt.NDArray[np.intp]:
        t = SlotTable.build(dict.fromkeys(members, 100), size or recommended_size(len(members)))
        # Map table positions (members sorted by id) back to positions in ``members``.
        where = {m: i for i, m in enumerate(members)}
        remap = np.array([where[m] for m in t.members], dtype=np.intp)
        return remap[t.index[(keys % np.uint64(t.size)).astype(np.intp)]]

    return assign


def modulo(members: Sequence[str], keys: Keys) -> npt.NDArray[np.intp]:
    return (keys % np.uint64(len(members))).astype(np.intp)


def ring(members: Sequence[str], keys: Keys) -> npt.NDArray[np.intp]:
    points = sorted(
        (_h32(f"{m}-{i}"), j) for j, m in enumerate(members) for i in range(RING_POINTS)
    )
    where = np.array([p for p, _ in points], dtype=np.uint64)
    owner = np.array([j for _, j in points], dtype=np.intp)
    idx = np.searchsorted(where, keys >> np.uint64(32), side="left") % len(where)
    return owner[idx]


def maglev_table(members: Sequence[str], size: int = MAGLEV_SIZE) -> list[int]:
    """Maglev's population (Eisenbud et al., NSDI 2016), rebuilt from scratch."""
    n = len(members)
    offset = [_h32("o:" + m) % size for m in members]
    skip = [_h32("s:" + m) % (size - 1) + 1 for m in members]
    nxt = [0] * n
    entry = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            c = (offset[i] + nxt[i] * skip[i]) % size
            while entry[c] >= 0:
                nxt[i] += 1
                c = (offset[i] + nxt[i] * skip[i]) % size
            entry[c] = i
            nxt[i] += 1
            filled += 1
            if filled == size:
                return entry


def maglev(members: Sequence[str], keys: Keys) -> npt.NDArray[np.intp]:
    table = np.array(maglev_table(members), dtype=np.intp)
    return table[(keys % np.uint64(MAGLEV_SIZE)).astype(np.intp)]


def _moved(assign: Assign, before: Sequence[str], after: Sequence[str], keys: Keys) -> float:
    a = np.array(before, dtype=object)[assign(before, keys)]
    b = np.array(after, dtype=object)[assign(after, keys)]
    return float(np.mean(a != b))


def _ring_balance(members: Sequence[str]) -> float:
    """Exact: each server's total arc length on the 32-bit ring."""
    points = sorted(
        (_h32(f"{m}-{i}"), j) for j, m in enumerate(members) for i in range(RING_POINTS)
    )
    arcs = np.zeros(len(members))
    previous = points[-1][0] - (1 << 32)
    for point, owner in points:
        arcs[owner] += point - previous  # keys in (previous, point] go to this point's server
        previous = point
    return float(arcs.max() / arcs.mean())


def _maglev_balance(members: Sequence[str]) -> float:
    """Exact: each server's share of Maglev's lookup table."""
    counts = np.bincount(np.array(maglev_table(members)), minlength=len(members))
    return float(counts.max() / counts.mean())


def _slot_balance(n: int, size: int) -> float:
    counts = list(SlotTable.build({f"backend-{i}": 100 for i in range(n)}, size).counts().values())
    return max(counts) / (size / n)


def disruption(keys: Keys, ns: Sequence[int]) -> None:
    algos: list[tuple[str, Assign]] = [
        ("limpet", limpet_at(None)),
        ("modulo", modulo),
        ("ketama-160", ring),
        ("maglev", maglev),
    ]
    print(f"\nDisruption: fraction of {len(keys)} keys that change backend (x optimum)")
    header = f"{'N':>5} {'case':>4} {'optimum':>8} " + " ".join(f"{n:>16}" for n, _ in algos)
    print(header)
    print("-" * len(header))
    for n in ns:
        base = [f"backend-{i}" for i in range(n)]
        cases = [
            ("+1", [*base, "backend-new"], 1 / (n + 1)),
            ("-1", base[: n // 2] + base[n // 2 + 1 :], 1 / n),
        ]
        for case, after, optimum in cases:
            cells = []
            for _, assign in algos:
                moved = _moved(assign, base, after, keys)
                cells.append(f"{moved:7.2%} ({moved / optimum:5.2f}x)")
            print(f"{n:>5} {case:>4} {optimum:8.2%} " + " ".join(f"{c:>16}" for c in cells))
    print(
        "limpet uses recommended_size(N): "
        + ", ".join(f"N={n}: {recommended_size(n)} slots" for n in ns)
        + f"; Maglev M={MAGLEV_SIZE}; ketama {RING_POINTS} points per server."
    )
    # The slot table itself, exactly (every slot, no key sampling) at the default size.
    print("\nlimpet slot-exact at the default size (moved slots / optimum):")
    for n in ns:
        weights = {f"backend-{i}": 100 for i in range(n)}
        t = SlotTable.build(weights, DEFAULT_SIZE)
        grown = SlotTable.build({**weights, "backend-new": 100}, DEFAULT_SIZE)
        gone = f"backend-{n // 2}"
        shrunk = SlotTable.build({k: v for k, v in weights.items() if k != gone}, DEFAULT_SIZE)
        add = sum(a != b for a, b in zip(t.owners, grown.owners, strict=True)) / DEFAULT_SIZE
        own = t.counts()[BackendId(gone)]
        rm = sum(a != b for a, b in zip(t.owners, shrunk.owners, strict=True))
        print(
            f"  N={n:>4}: +1 {add * (n + 1):.3f}x of 1/(N+1), "
            f"-1 {rm / own:.3f}x of the removed backend's {own} slots"
        )


def balance(ns: Sequence[int]) -> None:
    print("\nBalance: largest backend's share / mean share (exact, no key sampling)")
    print(f"{'N':>5} {'limpet':>8} {'@65537':>8} {'modulo':>8} {'ketama-160':>11} {'maglev':>8}")
    for n in ns:
        base = [f"backend-{i}" for i in range(n)]
        row = [
            _slot_balance(n, recommended_size(n)),
            _slot_balance(n, DEFAULT_SIZE),
            1.0,  # 2**64 keys over N residues: equal to within 1e-15
            _ring_balance(base),
            _maglev_balance(base),
        ]
        widths = (8, 8, 8, 11, 8)
        print(f"{n:>5} " + " ".join(f"{v:>{w}.3f}" for v, w in zip(row, widths, strict=True)))
    print("limpet: at recommended_size(N); @65537: at the default size.")


def _variant_row(n: int, size: int, eps: float | None, sets: int) -> tuple[float, ...]:
    """Worst balance, +1 and -1 ratios (slot-exact) over ``sets`` id sets, and build time."""
    worst_balance = worst_add = worst_remove = 0.0
    build = math.inf
    for k in range(sets):
        members = sorted(f"set{k}-backend-{i}" for i in range(n))

        def index(ms: list[str]) -> npt.NDArray[np.int32]:
            ordered = sorted(ms)
            return build_index([BackendId(m) for m in ordered], [100] * len(ordered), size, eps=eps)

        start = time.perf_counter()
        base = index(members)
        build = min(build, time.perf_counter() - start)
        names = np.array(members, dtype=object)[base]
        counts = np.bincount(base, minlength=n)
        worst_balance = max(worst_balance, counts.max() / (size / n))
        grown_members = sorted([*members, f"set{k}-new"])
        grown = np.array(grown_members, dtype=object)[index(grown_members)]
        worst_add = max(worst_add, float(np.mean(names != grown)) * (n + 1))
        gone = members[n // 2]
        rest = [m for m in members if m != gone]
        shrunk = np.array(rest, dtype=object)[index(rest)]
        worst_remove = max(worst_remove, float(np.sum(names != shrunk)) / counts[n // 2])
    return worst_balance, worst_add, worst_remove, build


def variants(sets: int) -> None:
    print(
        f"\nTable variants (slot-exact, worst of {sets} id sets): "
        "exact quotas (eps=0), plain weighted rendezvous (eps=inf), limpet's bounds"
    )
    print(
        f"{'N':>5} {'slots':>7} {'variant':>14} {'max/mean':>9} {'+1 x opt':>9} "
        f"{'-1 x share':>10} {'build':>9}"
    )
    for n, size in ((10, DEFAULT_SIZE), (100, DEFAULT_SIZE), (1000, DEFAULT_SIZE), (1000, 262147)):
        for label, eps in (("exact quotas", 0.0), ("plain HRW", math.inf), ("limpet", None)):
            bal, add, rm, build = _variant_row(n, size, eps, sets)
            shown = label if eps is not None else f"limpet e={bound_eps(size, n):.2f}"
            print(
                f"{n:>5} {size:>7} {shown:>14} {bal:>9.3f} {add:>9.3f} {rm:>10.3f} "
                f"{build * 1000:>6.0f} ms"
            )


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speed() -> None:
    print("\nSpeed (best of 3)")
    print(f"{'what':<44} {'time':>12}")
    for n in (10, 100, 1000):
        weights = {f"backend-{i}": 100 for i in range(n)}
        for size in sorted({DEFAULT_SIZE, recommended_size(n)}):
            t = _best(partial(SlotTable.build, weights, size))
            print(f"{f'table build N={n}, {size} slots':<44} {t * 1000:>9.1f} ms")
    for n in (10, 1000):
        members = [f"backend-{i}" for i in range(n)]
        t = _best(partial(maglev_table, members), repeat=1)
        print(f"{f'maglev build (pure Python) N={n}, M={MAGLEV_SIZE}':<44} {t * 1000:>9.1f} ms")

    ids = [BackendId(f"backend-{i}") for i in range(10)]
    backends = tuple(Backend(id=b, address="10.0.0.1", port=80) for b in ids)
    keys = (CookieKey(id="k", secret=b"k" * 32),)
    now = 1_700_000_000.0
    schedule = RebalanceSchedule.from_weights(
        dict.fromkeys(ids[:9], 100), start=now - 60, window=600, min_idle=30
    )
    router = Router(Plan(version=1, backends=backends, cookie_keys=keys, rebalance=schedule))
    key = cookie_key("0123456789abcdef0123456789abcdef")
    h = key_hash(key)
    owner = router.owner(h)
    assert owner is not None
    keep = Session(backend=owner, key_hash=h, last_seen=now - 1, created=now - 100)
    candidate_hash = next(
        x
        for x in range(100_000)
        if router.owner(x) == ids[9] and router.source_owners[x % DEFAULT_SIZE] != ids[9]
    )
    candidate = Session(
        backend=router.source_owners[candidate_hash % DEFAULT_SIZE],
        key_hash=candidate_hash,
        last_seen=now - 60,
        created=now - 100,
    )
    loads = dict.fromkeys(ids, 100)
    plain = Router(Plan(version=1, backends=backends, cookie_keys=keys))
    cases: list[tuple[str, Callable[[], object]]] = [
        ("decide: keep (no rebalance in the plan)", lambda: decide(keep, plain, now)),
        ("slot lookup: key_hash + slot_of_hash", lambda: slot_of_hash(key_hash(key))),
        ("owner lookup: router.owner(h)", lambda: router.owner(h)),
        ("decide: keep (rebalance, target unchanged)", lambda: decide(keep, router, now)),
        ("decide: rebalance candidate", lambda: decide(candidate, router, now)),
        ("route_new without loads", lambda: router.route_new(h, now)),
        ("route_new with loads (owner under cap)", lambda: router.route_new(h, now, loads, 1000)),
    ]
    for label, fn in cases:
        number = 200_000
        t = min(timeit.repeat(fn, number=number, repeat=3)) / number
        print(f"{label:<44} {t * 1e9:>9.0f} ns")
    full = dict(loads)
    full[owner] = 10_000
    t = min(timeit.repeat(lambda: router.route_new(h, now, full, 10_900), number=2000, repeat=3))
    print(f"{'route_new, owner full (preference walk)':<44} {t / 2000 * 1e9:>9.0f} ns")
    down = frozenset({owner})
    t = min(
        timeit.repeat(lambda: router.route_new(h, now, loads, exclude=down), number=2000, repeat=3)
    )
    print(f"{'route_new, owner excluded (preference walk)':<44} {t / 2000 * 1e9:>9.0f} ns")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench affinity", description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000, help="keys sampled (default 200000)")
    parser.add_argument(
        "--n", type=int, nargs="+", default=[3, 10, 100, 1000], help="backend counts"
    )
    parser.add_argument(
        "--variants",
        type=int,
        default=3,
        metavar="SETS",
        help="compare table variants over SETS id sets (0 skips; default 3)",
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(20240229)
    keys = np.frombuffer(rng.bytes(8 * args.keys), dtype=np.uint64)  # uniform 64-bit hashes
    disruption(keys, args.n)
    balance(args.n)
    if args.variants:
        variants(args.variants)
    speed()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
