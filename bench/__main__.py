"""Run benchmarks: ``python -m bench [NAME ...]`` (default: all of them, with their
defaults), or ``python -m bench NAME OPTION ...`` (one of them, with its options)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split], argv[split:]
    if options and len(names) != 1:
        print("usage: python -m bench [NAME ...] | python -m bench NAME OPTION ...")
        return 2
    names = names or sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )
    rc = 0
    for name in names:
        print(f"== bench {name} ==", flush=True)
        module = importlib.import_module(f"bench.{name}")
        rc |= int(module.main(options))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
