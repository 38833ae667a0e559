"""Run benchmarks: ``python -m bench [NAME ...]`` (default: all of them)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )
    rc = 0
    for name in names:
        print(f"== bench {name} ==", flush=True)
        module = importlib.import_module(f"bench.{name}")
        rc |= int(module.main([]))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
