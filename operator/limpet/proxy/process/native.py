"""Which of the proxy's hot-path modules run compiled (mypyc), and the report of it.

Data flow: :data:`COMPILED` is the one list of modules that ``tools/native/build.py``
compiles with mypyc into C extensions beside their sources (``make`` runs it; a
missing C compiler leaves the proxy interpreted). The build writes :data:`MANIFEST`
next to this file: each module's source hash at build time. :func:`build_mode` compares
what Python would import for each module with that manifest, without importing any of
them, and says whether the proxy runs ``compiled``, ``interpreted``, ``partial`` (some
extensions missing) or ``stale`` (a source changed since its extension was built, so
Python would run the old code: rebuild). ``limpet proxy`` logs the mode at start
(:func:`log_build_mode`), ``limpet proxy --build`` prints it, and ``/metrics`` exports
it as ``limpet_proxy_build_info``.

Concurrency: none; reads a few files. Nothing runs at import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
from pathlib import Path
from typing import Final

COMPILED: Final = (
    # The HTTP/1.1 engine: sans-I/O parsers and the asyncio shell around them.
    "limpet.proxy.engine.fields",
    "limpet.proxy.engine.request_head",
    "limpet.proxy.engine.response_head",
    "limpet.proxy.engine.framing",
    "limpet.proxy.engine.h1.request",
    "limpet.proxy.engine.h1.response",
    "limpet.proxy.engine.h1.connection",
    "limpet.proxy.engine.h1.actions",
    "limpet.proxy.engine.client",
    "limpet.proxy.engine.exchange",
    "limpet.proxy.engine.upstream",
    "limpet.proxy.engine.pool",
    "limpet.proxy.engine.server",
    "limpet.proxy.engine.write_batch",
    "limpet.proxy.engine.counters",
    "limpet.proxy.engine.backend_stats",
    "limpet.proxy.engine.port",
    # The session layer: the router and what it calls per request.
    "limpet.proxy.session.routing",
    "limpet.proxy.session.cookie_routing",
    "limpet.proxy.session.learned_routing",
    "limpet.proxy.session.store_notes",
    "limpet.proxy.session.cookies",
    "limpet.proxy.session.companion",
    "limpet.proxy.session.sessions",
    "limpet.proxy.session.learned",
    "limpet.proxy.session.request_keys",
    "limpet.proxy.session.snapshot",
    "limpet.proxy.session.shared_keys",
    "limpet.proxy.session.health",
    "limpet.proxy.session.stats",
    "limpet.proxy.session.random_ids",
    # The affinity core's per-request half: placing a new session, the bounded-load cap,
    # the migration decision of an existing session, key hashing; and the slot table.
    # Their checks of untyped input (a float size, a str key) take it as an object, so
    # that they raise AffinityError where a typed parameter would raise TypeError first.
    "limpet.affinity.router",
    "limpet.affinity.bounded",
    "limpet.affinity.rendezvous",
    "limpet.affinity.migration",
    "limpet.affinity.hashing",
    "limpet.affinity.slottable",
)
"""Modules compiled with mypyc, in one group. Add a module here and it is compiled by the
next ``make``; it must pass mypyc (no monkeypatching of its functions, no dynamic
attributes on its classes, declared types that hold at run time: mypyc checks them)."""

C_EXTENSIONS: Final = (
    # The cookie MAC over OpenSSL's SHA-256 blocks (cookies.new_hmac falls back to the
    # same MAC in Python without it).
    "limpet.proxy.session.native_mac",
    # The learned tables' index, keyed open addressing (key_index.DictIndex without it).
    "limpet.proxy.session.native_index",
)
"""Extensions written in C, each ``<name>.c`` beside where it is built; the same build
compiles them (with OpenSSL's headers) and the same manifest records their sources."""

GROUP: Final = "limpet_native"
"""mypyc's shared library for the group, ``limpet_native__mypyc.*.so``, a top-level module
beside the ``limpet`` package: mypyc derives the compiled modules' ``__file__`` from its
directory, so it cannot live inside the package."""

MANIFEST: Final = Path(__file__).with_name("native_build.json")

log = logging.getLogger("limpet.proxy")


@dataclasses.dataclass(frozen=True, slots=True)
class BuildMode:
    """How the modules of :data:`COMPILED` would be imported in this interpreter."""

    mode: str
    """``compiled``, ``interpreted``, ``partial`` or ``stale``."""
    compiled: tuple[str, ...]
    interpreted: tuple[str, ...]
    stale: tuple[str, ...]

    def describe(self) -> str:
        n = len(COMPILED) + len(C_EXTENSIONS)
        if self.mode == "compiled":
            return (
                f"compiled with mypyc ({len(COMPILED)} hot-path modules) "
                f"and {len(C_EXTENSIONS)} C extensions"
            )
        if self.mode == "interpreted":
            return "interpreted (no mypyc build; `make native` compiles it)"
        if self.mode == "stale":
            return (
                f"stale: {len(self.stale)} of {n} compiled modules are older than their "
                f"sources and run the old code ({', '.join(self.stale)}); rebuild with "
                "`make native` or tools/native/build.py"
            )
        return (
            f"partial: {len(self.compiled)} of {n} hot-path modules compiled, "
            f"interpreted: {', '.join(self.interpreted)}"
        )


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_of(root: Path, name: str) -> Path:
    """The source of a module of :data:`COMPILED` (its ``.py``) or of :data:`C_EXTENSIONS`
    (its ``.c``) under package root ``root``."""
    suffix = ".c" if name in C_EXTENSIONS else ".py"
    return root / (name.replace(".", "/") + suffix)


def build_mode() -> BuildMode:
    """Where each module of :data:`COMPILED` and :data:`C_EXTENSIONS` comes from (its
    spec's origin: already imported, or what the import system would pick), against the
    build's manifest."""
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())["modules"]
    except (OSError, ValueError, KeyError):
        built = {}
    compiled, interpreted, stale = [], [], []
    for name in (*COMPILED, *C_EXTENSIONS):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            interpreted.append(name)
            continue
        compiled.append(name)
        source = Path(origin).with_name(source_of(Path(), name).name)
        if not source.is_file() or built.get(name) != source_hash(source):
            stale.append(name)
    if stale:
        mode = "stale"
    elif not compiled:
        mode = "interpreted"
    elif interpreted:
        mode = "partial"
    else:
        mode = "compiled"
    return BuildMode(mode, tuple(compiled), tuple(interpreted), tuple(stale))


def log_build_mode() -> BuildMode:
    """Log the mode at start: info when compiled, a warning otherwise."""
    build = build_mode()
    level = logging.INFO if build.mode == "compiled" else logging.WARNING
    log.log(level, "proxy hot path: %s", build.describe())
    return build
