"""``limpet proxy``: the command line of the data plane.

Three ways to start:

- ``limpet proxy --plan FILE``: serve from a plan file (JSON, the schema of
  ``limpet.affinity.plan``); a newer plan saved in ``--state-dir`` wins.
- ``limpet proxy --backend ID=HOST:PORT [--backend ...] [--affinity MODE]``: standalone,
  no operator; every backend active, cookie affinity by default (cookie ``LIMPET``, key
  from ``--cookie-key-file`` or generated at start).
- ``limpet proxy --state-dir DIR`` alone: operator-managed; start from the saved plan (or
  none: ``/readyz`` answers 503 until the operator pushes one).

Data flow: arguments -> :class:`~limpet.proxy.settings.ProxySettings` plus an optional
starting plan -> ``app.serve`` (one process) or ``workers.supervise`` (``--workers N``).
Bad options print one line on stderr and exit with status 2. Nothing runs at import.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from limpet.affinity import CookieKey, Plan, PlanError, SessionStoreSettings
from limpet.affinity.plan.codec import plan_from_json
from limpet.proxy.settings import Address, ProxySettings, load_address_override

DEFAULTS = ProxySettings()


class UsageError(ValueError):
    """A bad option value: reported on one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _one_line_errors(parser)
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    _source_options(parser.add_argument_group("what to serve"))
    _store_options(
        parser.add_argument_group(
            "session store (standalone mode; with --plan the plan's sessionStore)"
        )
    )
    _process_options(parser.add_argument_group("process"))
    _limit_options(parser.add_argument_group("timeouts (seconds) and limits"))


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    def one_line_error(message: str) -> NoReturn:
        sys.stderr.write(f"limpet proxy: error: {message} (see limpet proxy --help)\n")
        sys.exit(2)

    # argparse prints the whole usage before its message; one line is kinder. Unknown
    # options would reach the top-level parser (which prints usage too), so they are
    # caught here as well.
    setattr(parser, "error", one_line_error)  # noqa: B010
    parse_known = parser.parse_known_args

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = parse_known(args, namespace)
        if extra:
            one_line_error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra

    setattr(parser, "parse_known_args", parse_known_args)  # noqa: B010


def _source_options(src: argparse._ArgumentGroup) -> None:
    src.add_argument("--plan", metavar="FILE", help="serve from this plan file (JSON)")
    src.add_argument(
        "--backend",
        metavar="ID=HOST:PORT",
        action="append",
        default=[],
        help="standalone mode: a backend (repeat for more)",
    )
    src.add_argument(
        "--affinity",
        metavar="MODE",
        default=None,
        help="standalone mode: cookie | app-cookie:NAME | header:NAME | query:NAME | "
        "client-ip (default cookie)",
    )
    src.add_argument(
        "--cookie-key-file",
        metavar="FILE",
        help="standalone mode: LB cookie signing secret (16+ bytes); else generated at start",
    )


def _store_options(store: argparse._ArgumentGroup) -> None:
    store.add_argument(
        "--session-store",
        metavar="HOST:PORT",
        help=(
            "a Redis-protocol server shared by every replica "
            "(cluster-wide session counts and learned keys)"
        ),
    )
    store.add_argument("--session-store-password-file", metavar="FILE")
    store.add_argument("--session-store-prefix", metavar="PREFIX", default="limpet:")
    store.add_argument("--session-store-tls", action="store_true")
    store.add_argument("--session-store-ca-file", metavar="FILE")
    store.add_argument(
        "--session-store-timeout",
        metavar="S",
        help="a store call slower than this (0.001..10 s) is a failure: local tables "
        "decide (default 0.25)",
    )


def _process_options(proc: argparse._ArgumentGroup) -> None:
    proc.add_argument(
        "--build",
        action="store_true",
        help="print whether the hot path runs compiled (mypyc) or interpreted, and exit "
        "(status 1 when partial or stale)",
    )
    proc.add_argument("--listen", metavar="HOST:PORT", default=str(DEFAULTS.listen))
    proc.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        default=str(DEFAULTS.admin_listen),
        help="admin API listener (always separate from --listen)",
    )
    proc.add_argument(
        "--token-file",
        metavar="FILE",
        help="admin bearer token; without it the admin API is locked (healthz/readyz open)",
    )
    proc.add_argument(
        "--state-dir", metavar="DIR", help="persist the last accepted plan here; load it at start"
    )
    proc.add_argument(
        "--workers",
        metavar="N",
        default="1",
        help="worker processes sharing --listen via SO_REUSEPORT (a dead one is restarted)",
    )
    proc.add_argument(
        "--trusted-proxy",
        metavar="CIDR",
        action="append",
        default=[],
        help="trust X-Forwarded-* from these peers (repeat for more)",
    )
    proc.add_argument(
        "--address-override",
        metavar="FILE",
        help='tests and the local demo only: JSON {"podIP:port": "127.0.0.1:port"}',
    )
    proc.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    proc.add_argument(
        "--no-latency-histogram",
        dest="latency_histogram",
        action="store_false",
        help="leave out limpet_proxy_request_duration_seconds (saves two clock reads a request)",
    )
    proc.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave start-up's objects to the cyclic garbage collector (see docs/proxy.md)",
    )
    proc.add_argument(
        "--gc-threshold",
        metavar="G0,G1,G2",
        help="the garbage collector's thresholds (default: Python's, 700,10,10)",
    )


def _limit_options(lim: argparse._ArgumentGroup) -> None:
    for name, metavar, help_text in (
        ("head-timeout", "S", "time allowed to send a request head (slowloris guard)"),
        ("idle-timeout", "S", "idle time allowed between keep-alive requests"),
        ("send-timeout", "S", "time a client may leave an answer unread (then it is cut)"),
        ("connect-timeout", "S", "time allowed to connect to a backend"),
        ("response-timeout", "S", "backend silence allowed while a request is outstanding"),
        ("tunnel-idle-timeout", "S", "idle time allowed on an upgraded (WebSocket) connection"),
        ("pool-idle-timeout", "S", "idle time before a pooled backend connection is closed"),
        ("max-request-line", "N", "longest request target in bytes (414 beyond)"),
        ("max-header-bytes", "N", "largest request header section in bytes (431 beyond)"),
        ("max-headers", "N", "most request header fields (431 beyond)"),
        ("max-connections", "N", "open client connections per worker (503 and close beyond)"),
        ("pool-max-idle", "N", "idle keep-alive connections kept per backend"),
    ):
        lim.add_argument(
            f"--{name}",
            metavar=metavar,
            default=str(getattr(DEFAULTS, name.replace("-", "_"))),
            help=help_text,
        )


MAX_SECONDS = 7 * 86400
"""The longest timeout an option takes (a week): beyond it a value is a typo, and
``inf`` would switch the slowloris and dead-backend guards off."""

RANGES: dict[str, tuple[float, float]] = {
    "head-timeout": (0.001, MAX_SECONDS),
    "idle-timeout": (0.001, MAX_SECONDS),
    "send-timeout": (0.001, MAX_SECONDS),
    "connect-timeout": (0.001, MAX_SECONDS),
    "response-timeout": (0.001, MAX_SECONDS),
    "tunnel-idle-timeout": (0.001, MAX_SECONDS),
    "pool-idle-timeout": (0.001, MAX_SECONDS),
    # Sizes bound what one client may make the proxy buffer before it answers 414/431.
    "max-request-line": (64, 1 << 20),
    "max-header-bytes": (256, 16 << 20),
    "max-headers": (1, 10_000),
    "max-connections": (1, 1_000_000),
    "pool-max-idle": (0, 100_000),
}
"""Each limit option's accepted range (inclusive)."""

MAX_GC_COUNT = (1 << 31) - 1
"""The collector's thresholds are C ints."""


def _number(args: argparse.Namespace, name: str, kind: type[int] | type[float]) -> float:
    raw = getattr(args, name.replace("-", "_"))
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"--{name}: expected a number, got {raw!r}") from None
    low, high = RANGES[name]
    if not low <= value <= high:  # NaN fails this too
        unit = " seconds" if kind is float else ""
        raise UsageError(f"--{name}: must be from {low:g} to {high:g}{unit}, got {raw!r}")
    return value


def _address(option: str, text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def load_cookie_key(path: Path) -> CookieKey:
    """A signing key from a file holding the secret (16..1024 bytes, surrounding
    whitespace ignored). The key id derives from the secret, so replicas sharing the
    file agree."""
    secret = path.read_bytes().strip()
    if not 16 <= len(secret) <= 1024:
        raise UsageError(f"--cookie-key-file {path}: the secret must be 16..1024 bytes")
    return CookieKey(id="f" + hashlib.sha256(secret).hexdigest()[:12], secret=secret)


def _store(args: argparse.Namespace) -> SessionStoreSettings | None:
    """``--session-store*`` as plan settings (``None`` without ``--session-store``)."""
    timeout = args.session_store_timeout
    if not args.session_store:
        if args.session_store_password_file or args.session_store_ca_file or timeout is not None:
            raise UsageError("--session-store-* options need --session-store HOST:PORT")
        return None
    for option, path in (
        ("--session-store-password-file", args.session_store_password_file),
        ("--session-store-ca-file", args.session_store_ca_file),
    ):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option}: no such file: {path}")
    try:
        store = SessionStoreSettings(
            address=args.session_store,
            tls=bool(args.session_store_tls or args.session_store_ca_file),
            ca_file=str(Path(args.session_store_ca_file).resolve())
            if args.session_store_ca_file
            else None,
            password_file=str(Path(args.session_store_password_file).resolve())
            if args.session_store_password_file
            else None,
            key_prefix=args.session_store_prefix,
        )
    except PlanError as exc:
        raise UsageError(f"--session-store: {exc}") from None
    if timeout is None:
        return store
    try:
        return replace(store, timeout=float(timeout))
    except (ValueError, PlanError):
        raise UsageError(
            f"--session-store-timeout: must be from 0.001 to 10 seconds, got {timeout!r}"
        ) from None


def _backends(specs: list[str]) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for spec in specs:
        bid, sep, where = spec.partition("=")
        if not sep or not bid:
            raise UsageError(f"--backend: expected ID=HOST:PORT, got {spec!r}")
        addr = _address("--backend", where)
        if addr.port == 0:
            raise UsageError(f"--backend {spec}: port 0 is not a backend port")
        out.append((bid, addr.host, addr.port))
    return out


def build(args: argparse.Namespace) -> tuple[ProxySettings, Plan | None, bool]:
    """Arguments -> (settings, starting plan, whether that plan beats a saved one)."""
    settings = _settings(args)
    plan, fresh = _starting_plan(args, settings)
    return settings, plan, fresh


def _settings(args: argparse.Namespace) -> ProxySettings:
    try:
        workers = int(args.workers)
    except ValueError:
        raise UsageError(f"--workers: expected an integer, got {args.workers!r}") from None
    if not 1 <= workers <= 256:
        raise UsageError("--workers: must be between 1 and 256")
    try:
        trusted = tuple(ipaddress.ip_network(c, strict=False) for c in args.trusted_proxy)
    except ValueError as exc:
        raise UsageError(f"--trusted-proxy: {exc}") from None
    listen = _address("--listen", args.listen)
    admin = _address("--admin-listen", args.admin_listen)
    if listen == admin and listen.port != 0:
        raise UsageError("--admin-listen must differ from --listen")
    override = {}
    if args.address_override:
        try:
            override = dict(load_address_override(Path(args.address_override)))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--address-override: {exc}") from None
    try:
        settings = ProxySettings(
            listen=listen,
            admin_listen=admin,
            workers=workers,
            head_timeout=_number(args, "head-timeout", float),
            idle_timeout=_number(args, "idle-timeout", float),
            send_timeout=_number(args, "send-timeout", float),
            connect_timeout=_number(args, "connect-timeout", float),
            response_timeout=_number(args, "response-timeout", float),
            tunnel_idle_timeout=_number(args, "tunnel-idle-timeout", float),
            pool_idle_timeout=_number(args, "pool-idle-timeout", float),
            max_request_line=int(_number(args, "max-request-line", int)),
            max_header_bytes=int(_number(args, "max-header-bytes", int)),
            max_headers=int(_number(args, "max-headers", int)),
            max_connections=int(_number(args, "max-connections", int)),
            pool_max_idle=int(_number(args, "pool-max-idle", int)),
            trusted_proxies=trusted,
            address_override=override,
            token_file=Path(args.token_file) if args.token_file else None,
            state_dir=Path(args.state_dir) if args.state_dir else None,
            cookie_key_file=Path(args.cookie_key_file) if args.cookie_key_file else None,
            latency_histogram=args.latency_histogram,
            gc_freeze=args.gc_freeze,
            gc_threshold=_gc_threshold(args.gc_threshold),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    state = settings.state_dir
    if state is not None and state.exists() and not state.is_dir():
        raise UsageError(f"--state-dir: {state} is not a directory")
    if settings.token_file is not None:
        try:
            token = settings.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file: cannot read {settings.token_file}: {exc}") from None
        if not token:
            raise UsageError(f"--token-file: {settings.token_file} is empty")
    return settings


def _starting_plan(args: argparse.Namespace, settings: ProxySettings) -> tuple[Plan | None, bool]:
    if args.plan and args.backend:
        raise UsageError("--plan and --backend exclude each other")
    store = _store(args)
    if args.plan:
        if args.affinity or args.cookie_key_file or store:
            raise UsageError(
                "--affinity, --cookie-key-file and --session-store are for standalone (--backend)"
            )
        try:
            return plan_from_json(Path(args.plan).read_bytes()), False
        except OSError as exc:
            raise UsageError(f"--plan: {exc.strerror or exc}: {args.plan}") from None
        except PlanError as exc:
            raise UsageError(f"--plan {args.plan}: {exc}") from None
    if not args.backend:
        if args.affinity or args.cookie_key_file or store:
            raise UsageError(
                "--affinity, --cookie-key-file and --session-store need --backend ID=HOST:PORT"
            )
        return None, False
    # Standalone: imported here so that `--help` stays cheap.
    from limpet.proxy.process.standalone import parse_affinity, standalone_plan

    keys: tuple[CookieKey, ...] = ()
    if settings.cookie_key_file is not None:
        try:
            keys = (load_cookie_key(settings.cookie_key_file),)
        except OSError as exc:
            raise UsageError(f"--cookie-key-file: {exc}") from None
    try:
        affinity = parse_affinity(
            args.affinity or "cookie",
            trusted_proxies=[str(n) for n in settings.trusted_proxies],
        )
        plan = standalone_plan(_backends(args.backend), affinity, keys, session_store=store)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    return plan, True


def _gc_threshold(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--gc-threshold: expected three counts G0,G1,G2, got {text!r}")
    g0, g1, g2 = (int(p) for p in parts)
    if max(g0, g1, g2) > MAX_GC_COUNT:
        raise UsageError(f"--gc-threshold: each count must be at most {MAX_GC_COUNT}")
    return g0, g1, g2


def run(args: argparse.Namespace) -> int:
    from limpet.proxy.process.native import build_mode, log_build_mode

    if args.build:
        mode = build_mode()
        sys.stdout.write(f"limpet proxy hot path: {mode.describe()}\n")
        return 0 if mode.mode in ("compiled", "interpreted") else 1
    try:
        settings, plan, prefer_given = build(args)
    except UsageError as exc:
        sys.stderr.write(f"limpet proxy: error: {exc}\n")
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log_build_mode()
    import uvloop

    try:
        if settings.workers > 1:
            from limpet.proxy.process.workers import supervise

            return uvloop.run(supervise(settings, plan=plan, prefer_given=prefer_given))
        from limpet.proxy.process.app import serve

        return uvloop.run(serve(settings, plan=plan, prefer_given=prefer_given))
    except OSError as exc:
        sys.stderr.write(f"limpet proxy: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
