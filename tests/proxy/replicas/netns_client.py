"""One user of the network-namespace ClientIP test, run inside its own namespace:
``python -m tests.proxy.replicas.netns_client --name u0 --source 10.x.y.z --replica
10.x.y.a:port ...``.

Data flow: every line on stdin, ``<requests> <gap seconds>``, is one phase: that many
requests, ``gap`` apart, each to a replica a seeded generator picks at random, sent
from ``--source`` (binding it fails unless the namespace holds that address). After
each phase, one JSON line on stdout: the counter app's verdicts and announced moves,
the pods that answered, in order, the client addresses the app was told (the
``X-Forwarded-For`` the proxies added), and any error. The user's session state (the count
the app must continue) lives on across phases; EOF ends the process.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass

from tests.proxy.replicas.fleet import Tally, User


@dataclass(frozen=True)
class Address:
    address: tuple[str, int]


def parse_replica(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address((host, int(port)))


def phase(user: User, replicas: list[Address], rng: random.Random, count: int, gap: float) -> Tally:
    tally = Tally()
    for n in range(count):
        if n:
            time.sleep(gap)
        user.request(rng.choice(replicas), tally)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--replica", type=parse_replica, action="append", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    user = User(args.name, keyed=True, source=args.source)
    rng = random.Random(args.seed)
    for line in sys.stdin:
        count, gap = line.split()
        start = len(user.pods)
        tally = phase(user, args.replica, rng, int(count), float(gap))
        report = {
            "verdicts": dict(tally.verdicts),
            "moves": dict(tally.moves),
            "errors": tally.errors,
            "pods": user.pods[start:],
            "seenAs": sorted(user.seen_as),
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
