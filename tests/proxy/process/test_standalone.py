"""Standalone mode: plans from ``--backend`` and ``--affinity``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from limpet.affinity import AffinityType
from limpet.proxy.process.command import UsageError, add_arguments, build
from limpet.proxy.process.standalone import parse_affinity, standalone_plan

from ..routing_helpers import Client, Clock, mkrouter


def test_standalone_plan() -> None:
    p = standalone_plan([("a", "127.0.0.1", 8001), ("b", "127.0.0.1", 8002)], "cookie")
    assert p.affinity.cookie.name == "LIMPET"
    assert len(p.cookie_keys) == 1
    assert [b.id for b in p.backends] == ["a", "b"]
    r = mkrouter(Clock(), p)
    assert Client().get(r).set_cookie is not None
    h = standalone_plan([("a", "h.example", 1)], "header:X-User")
    assert h.affinity.type is AffinityType.HEADER
    assert h.affinity.header_name == "X-User"
    assert h.cookie_keys == ()
    assert standalone_plan([("a", "::1", 1)], "client-ip").affinity.type is AffinityType.CLIENT_IP
    assert parse_affinity("app-cookie:JSESSIONID").app_cookie_name == "JSESSIONID"
    assert parse_affinity("query:sid").query_name == "sid"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sticky", "unknown affinity"),
        ("header", "needs a name"),
        ("cookie:X", "takes no name"),
        ("header:bad name", "header"),
    ],
)
def test_parse_affinity_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_affinity(text)
    with pytest.raises(ValueError, match="at least one"):
        standalone_plan([], "cookie")


def _build(*argv: str) -> object:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build(parser.parse_args(list(argv)))[1]


def test_session_store_flags(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    backend = "--backend=a=127.0.0.1:8001"
    plan = _build(backend, "--session-store", "127.0.0.1:6390")
    store = getattr(plan, "session_store", None)
    assert store is not None
    assert (store.address, store.key_prefix, store.tls) == ("127.0.0.1:6390", "limpet:", False)
    plan = _build(
        backend,
        "--session-store=r.example:6379",
        f"--session-store-password-file={password}",
        "--session-store-prefix=shop:",
        "--session-store-tls",
    )
    store = getattr(plan, "session_store", None)
    assert store is not None
    assert (store.password_file, store.key_prefix, store.tls) == (str(password), "shop:", True)
    assert store.timeout == 0.25  # the plan's default
    store = getattr(
        _build(backend, "--session-store=r:1", "--session-store-timeout=1.5"), "session_store", None
    )
    assert store is not None
    assert store.timeout == 1.5
    for bad in ("0", "10.5", "nan", "inf", "-1", "1s", ""):
        with pytest.raises(UsageError, match=r"--session-store-timeout: must be from 0\.001 to 10"):
            _build(backend, "--session-store=r:1", f"--session-store-timeout={bad}")
    with pytest.raises(UsageError, match="need --session-store"):
        _build(backend, "--session-store-timeout=1")
    with pytest.raises(UsageError, match="host:port"):
        _build(backend, "--session-store", "nope")
    with pytest.raises(UsageError, match="no such file"):
        _build(backend, "--session-store=r:1", f"--session-store-password-file={tmp_path}/x")
    with pytest.raises(UsageError, match="need --session-store"):
        _build(backend, f"--session-store-password-file={password}")
    with pytest.raises(UsageError, match="need --backend"):
        _build("--session-store", "127.0.0.1:6390")
