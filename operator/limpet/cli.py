"""The ``limpet`` command: one entry point, one subcommand per process kind.

Each subcommand lives in its own package as a module exposing
``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Modules are imported only when their
subcommand is chosen, so ``limpet proxy`` never pays for kopf or the Kubernetes
client, and nothing happens at import time.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "devcluster": (
        "limpet.devcluster.command",
        "run a local etcd + kube-apiserver on loopback and write a kubeconfig",
    ),
    "proxy": ("limpet.proxy.process.command", "run the sticky-session proxy"),
    "operator": ("limpet.controller.command", "run the StickyService operator"),
    "demo": ("limpet.demo.command", "run the end-to-end scaling demo"),
}


class Subcommand(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(module: str) -> Subcommand:
    return cast(Subcommand, importlib.import_module(module))


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="limpet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    return _load(SUBCOMMANDS[args.command][0]).run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
