"""Fuzz the proxy's HTTP/1.1 engine with the h11 oracle attached, at volume.

``python -m bench.http_fuzz --count 1000000 --seconds 1800`` (or ``python -m bench
http_fuzz`` for the default, shorter run). Messages come from the grammar of
``tests/proxy/fuzzing.py``: mostly valid requests and backend answers, smuggling tricks
(CL.TE, TE.CL, obfuscated Transfer-Encoding, chunk-size overflow, chunk extensions,
bare CR/LF, whitespace before the colon, obs-fold, duplicate Host, Connection listing
framing fields) and byte mutations, from a seeded ``random.Random``.

Two parts, both bounded in count and time:

- in memory: the real engine (client and backend connections, the pool, the session
  router) on in-memory transports, one request or answer per fresh client connection,
  with the h11 oracle checking every outcome;
- over real sockets (``--sockets N``): a real ``limpet proxy`` process on loopback in
  front of the h11 recording backend, fed a sample of the same grammar.

Printed: messages, outcomes (ok, refused, lenient: RFC-permitted input that h11
refuses, forwarded canonical), crashes (an exception out of an engine callback), hangs
(a complete message neither answered nor closed), oracle disagreements, resident memory
growth between the first tenth of the run and its end, and the rate. The goal for
crashes, hangs and disagreements is 0; the exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from tests.proxy.fuzzing import Harness, request, response


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_memory(count: int, seconds: float, seed: int) -> tuple[Counter[str], list[str], float]:
    """The in-memory part: returns the outcome counts, examples of failures and the RSS
    growth in MiB."""
    rnd = random.Random(seed)
    harness = Harness()
    counts: Counter[str] = Counter()
    examples: list[str] = []
    deadline = time.monotonic() + seconds
    base_rss = 0.0
    try:
        for i in range(count):
            if i == count // 10:
                base_rss = _rss_mib()
            if i % 1000 == 0 and time.monotonic() > deadline:
                counts["stopped by time"] = 1
                break
            is_answer = i % 5 == 4
            data = response(rnd) if is_answer else request(rnd)
            counts["messages"] += 1
            try:
                outcome = (harness.run_response if is_answer else harness.run_request)(data)
            except Exception:
                counts["crashes"] += 1
                if len(examples) < 10:
                    examples.append(f"crash on {data!r}\n{traceback.format_exc()}")
                harness.close()
                harness = Harness()
                continue
            kind = outcome.kind
            if kind == "disagreement" and outcome.detail.startswith("hang"):
                kind = "hangs"
            elif kind == "disagreement":
                kind = "oracle disagreements"
            counts[("answer " if is_answer else "request ") + kind] += 1
            if kind in ("hangs", "oracle disagreements"):
                counts[kind] += 1
                if len(examples) < 10:
                    examples.append(f"{kind} on {data!r}: {outcome.detail}")
    finally:
        harness.close()
    return counts, examples, (_rss_mib() - base_rss) if base_rss else 0.0


def run_sockets(count: int, seed: int) -> tuple[Counter[str], list[str]]:
    """The real-socket part: a ``limpet proxy`` process and the h11 recording backend."""
    from tests.proxy.conftest import Proxies
    from tests.proxy.oracle import RecordingBackend, check_exchange, send_raw

    rnd = random.Random(seed + 1)
    harness = Harness()
    backend = RecordingBackend()
    counts: Counter[str] = Counter()
    examples: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        proxies = Proxies(Path(tmp))
        try:
            proxy = proxies.start(
                "--backend", f"s1=127.0.0.1:{backend.port}", "--affinity", "cookie"
            )
            while counts["messages"] < count:
                data = request(rnd)
                if harness.run_request(data).kind == "lenient":
                    continue  # h11 cannot judge these; the in-memory part checks them
                counts["messages"] += 1
                backend.take(settle=0.02)
                method = b"HEAD" if data.startswith(b"HEAD ") else b"GET"
                client = send_raw(proxy.address, data, method=method)
                problem = check_exchange(data, client, backend.take(settle=0.05))
                if problem is not None:
                    counts["oracle disagreements"] += 1
                    if len(examples) < 5:
                        examples.append(f"socket disagreement on {data!r}: {problem}")
            counts["backend h11 errors"] = len(backend.errors)
            counts["proxy alive"] = int(proxy.proc.poll() is None)
        finally:
            proxies.close()
            backend.close()
            harness.close()
    return counts, examples


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_fuzz", description=__doc__)
    parser.add_argument("--count", type=int, default=50_000, help="in-memory messages")
    parser.add_argument("--seconds", type=float, default=120.0, help="in-memory time bound")
    parser.add_argument("--sockets", type=int, default=200, help="real-socket messages")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.monotonic()
    counts, examples, growth = run_memory(args.count, args.seconds, args.seed)
    elapsed = time.monotonic() - start
    print(f"in memory: {counts['messages']} messages in {elapsed:.0f} s", end="")
    print(f" ({counts['messages'] / max(elapsed, 1e-9):.0f}/s), seed {args.seed}")
    for key in sorted(counts):
        if key != "messages":
            print(f"  {key:32} {counts[key]}")
    print(f"  {'crashes':32} {counts['crashes']}")
    print(f"  {'hangs':32} {counts['hangs']}")
    print(f"  {'oracle disagreements':32} {counts['oracle disagreements']}")
    print(f"  {'memory growth (MiB, after 10 %)':32} {growth:.1f}")
    failures = counts["crashes"] + counts["hangs"] + counts["oracle disagreements"]
    if args.sockets:
        start = time.monotonic()
        sock_counts, sock_examples = run_sockets(args.sockets, args.seed)
        print(f"real sockets: {sock_counts['messages']} messages in", end="")
        print(f" {time.monotonic() - start:.0f} s")
        for key in sorted(sock_counts):
            if key != "messages":
                print(f"  {key:32} {sock_counts[key]}")
        failures += sock_counts["oracle disagreements"] + sock_counts["backend h11 errors"]
        failures += 1 - sock_counts["proxy alive"]
        examples += sock_examples
    for example in examples:
        print(example)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
