"""Hostile plans against a real ``limpet proxy`` process, whatever its build (compiled with
mypyc under ``make test``): pushed through the admin API, given as ``--plan`` files and
planted as the saved plan of ``--state-dir``.

Each bad plan must get a clear error that names the offending JSON path (400 with
``{"error": "invalid plan: <path>: ..."}``, or one ``limpet proxy: error:`` line and
status 2), never a 500, a traceback or a dead process; and the proxy must keep serving
good traffic on the plan it held before. The oracle is the backend's own answer (which
backend served, by its id) and the proxy's log, which must hold no traceback.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT, Backend, Backends, Conn, Proxies, Proxy, _env

SECRET = "MDEyMzQ1Njc4OWFiY2RlZg=="  # base64 of 16 bytes


def good_plan(b: Backend, version: int) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "version": version,
        "backends": [
            {"id": b.id, "address": "127.0.0.1", "port": b.port, "state": "Active", "weight": 100}
        ],
        "cookieKeys": [{"id": "k1", "secret": SECRET}],
    }


def mutated(base: dict[str, Any], path: str, value: object) -> bytes:
    """``base`` with the value at dotted ``path`` (list indexes as numbers) replaced."""
    d = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = d
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return json.dumps(d).encode()


def raw(base: dict[str, Any], key: str, literal: str) -> bytes:
    """``base`` with top-level ``key`` set to a JSON literal json.dumps cannot write."""
    text = json.dumps({k: v for k, v in base.items() if k != key})
    return (text[:-1] + f', "{key}": {literal}}}').encode()


def hostile_bodies(base: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(what, body, the start of the error message it must get)."""
    huge = 10**400  # beyond a double: float() raises OverflowError
    backend = base["backends"][0]
    junk_rebalance = {"fromBackends": {"a": [1]}, "start": 1, "window": 1, "minIdle": 1}
    return [
        ("huge version", mutated(base, "version", huge), "version: must be an integer"),
        ("5000-digit integer", raw(base, "version", "1" * 5000), "plan JSON: not valid JSON"),
        (
            "huge float field",
            mutated(base, "backends.0.drainDeadline", huge),
            "backends[0].drainDeadline",
        ),
        ("huge drain.minIdle", mutated(base, "drain.minIdle", huge), "drain.minIdle"),
        ("huge loadFactor", mutated(base, "balance.loadFactor", huge), "balance.loadFactor"),
        ("huge idleTimeout", mutated(base, "affinity.idleTimeout", huge), "affinity.idleTimeout"),
        ("1e400", raw(base, "drain", '{"minIdle": 1e400}'), "drain.minIdle: must be a finite"),
        ("NaN", raw(base, "drain", '{"minIdle": NaN}'), "plan JSON: NaN is not a valid number"),
        ("-Infinity", raw(base, "generatedAt", "-Infinity"), "plan JSON: -Infinity"),
        (
            "store port of 5000 digits",
            mutated(base, "sessionStore", {"address": "h:" + "9" * 5000}),
            "sessionStore.address",
        ),
        (
            "store port in Arabic-Indic digits",
            mutated(base, "sessionStore", {"address": "h:\u0661\u0662"}),
            "sessionStore.address",
        ),
        (
            "store timeout huge",
            mutated(base, "sessionStore", {"address": "h:1", "timeout": huge}),
            "sessionStore.timeout",
        ),
        ("int for str", mutated(base, "backends.0.id", 5), "backends[0].id: must be a string"),
        (
            "str for int",
            mutated(base, "backends.0.port", "80"),
            "backends[0].port: must be an integer",
        ),
        (
            "bool for int",
            mutated(base, "backends.0.weight", True),
            "backends[0].weight: must be an integer",
        ),
        (
            "float port",
            mutated(base, "backends.0.port", 80.5),
            "backends[0].port: must be an integer",
        ),
        ("null version", mutated(base, "version", None), "version: required"),
        ("null backends", mutated(base, "backends", None), "backends: required"),
        (
            "nested junk as enum",
            mutated(base, "affinity.type", {"a": [1, {"b": None}]}),
            "affinity.type: must be one of",
        ),
        (
            "nested junk as object",
            mutated(base, "affinity.cookie", [[[]]]),
            "affinity.cookie: must be an object",
        ),
        (
            "nested junk in fallback",
            mutated(base, "affinity.fallback", [[{"x": 1}]]),
            "affinity.fallback[0]",
        ),
        (
            "junk fromBackends weight",
            mutated(base, "rebalance", junk_rebalance),
            "rebalance.fromBackends.a",
        ),
        ("unicode backend id", mutated(base, "backends.0.id", "b\u00e9\u200b"), "backends[0].id"),
        (
            "unicode address",
            mutated(base, "backends.0.address", "p\u00f6d.local"),
            "backends[0].address",
        ),
        (
            "numeric name that dials 127.0.0.1",
            mutated(base, "backends.0.address", "127.1"),
            "backends[0].address",
        ),
        (
            "hex name that dials 127.0.0.1",
            mutated(base, "backends.0.address", "0x7f.1"),
            "backends[0].address",
        ),
        (
            "duplicate backend ids",
            mutated(base, "backends", [backend, backend]),
            "backends[1].id: duplicate",
        ),
        (
            "duplicate JSON keys",
            b'{"version": 1, "version": 2}',
            "plan JSON: duplicate key 'version'",
        ),
        (
            "10 001 backends",
            mutated(base, "backends", [dict(backend, id=f"b{i}") for i in range(10_001)]),
            "backends: at most 10000",
        ),
        (
            "empty cookie keys with Cookie affinity",
            mutated(base, "cookieKeys", []),
            "cookieKeys: at least one key",
        ),
        (
            "secret not base64",
            mutated(base, "cookieKeys.0.secret", "\u00e9\u00e9"),
            "cookieKeys[0].secret",
        ),
        ("unknown field", mutated(base, "backends.0.ip", "10.0.0.1"), "backends[0]: unknown field"),
        ("top-level array", b"[]", "(plan): must be an object"),
        ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, "plan JSON: nested too deeply"),
        ("not UTF-8", b'{"name": "\xff"}', "plan JSON: not valid JSON"),
        ("empty body", b"", "plan JSON: not valid JSON"),
        ("schema 2", mutated(base, "schemaVersion", 2), "schemaVersion: unsupported"),
    ]


def served_by(p: Proxy, want: str) -> None:
    with Conn(p.address) as c:
        r = c.request("GET", "/who")
    assert r.status == 200, (r.status, r.body)
    assert r.json()["backend"] == want


def assert_no_traceback(p: Proxy) -> None:
    log = p.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert p.proc.poll() is None, log[-4000:]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_hostile_pushes_get_a_400_naming_the_field_and_traffic_goes_on(
    backends: Backends, proxy: Proxies, tmp_path: Path, workers: str
) -> None:
    a = backends.start("a")
    state = str(tmp_path / "state")
    p = proxy.start("--backend", f"a={a.address}", "--state-dir", state, "--workers", workers)
    base = good_plan(a, version=10)
    wrong: list[str] = []
    for i, (what, body, expected) in enumerate(hostile_bodies(base)):
        status, answer = p.admin("PUT", "/v1/plan", body)
        try:
            error = json.loads(answer)["error"]
        except (ValueError, KeyError):
            error = answer.decode(errors="replace")
        if status != 400 or not error.startswith(f"invalid plan: {expected}"):
            wrong.append(f"{what}: {status} {error[:200]}")
        if i % 8 == 0:
            served_by(p, "a")
    assert not wrong, "\n".join(wrong)
    assert p.stats()["planVersion"] == 1  # the standalone plan, untouched
    served_by(p, "a")
    # The proxy still takes a good plan afterwards.
    status, answer = p.admin("PUT", "/v1/plan", json.dumps(base).encode())
    assert status == 200, answer
    assert p.stats()["planVersion"] == 10
    served_by(p, "a")
    assert_no_traceback(p)


def test_odd_but_valid_plans_are_taken_and_a_stale_one_gets_409(
    backends: Backends, proxy: Proxies
) -> None:
    a, b = backends.start("a"), backends.start("b")
    p = proxy.start("--backend", f"a={a.address}")
    # No backends at all: a clear 503 for traffic, never a crash.
    empty = good_plan(a, version=2) | {"backends": []}
    assert p.admin("PUT", "/v1/plan", json.dumps(empty).encode())[0] == 200
    with Conn(p.address) as c:
        r = c.request("GET", "/who")
    assert (r.status, r.body) == (503, b"no backend available\n")
    # The most backends a plan may have, 9 999 of them Failed: the one that is up serves.
    many = good_plan(b, version=3)
    many["backends"] += [
        {"id": f"x{i}", "address": "127.0.0.1", "port": a.port, "state": "Failed", "weight": 1}
        for i in range(9_999)
    ]
    many["name"] = "ns/\u00e9\u6f22\u5b57 \ud83e\udd80"  # any text, up to 512 characters
    assert p.admin("PUT", "/v1/plan", json.dumps(many).encode())[0] == 200
    served_by(p, "b")
    # A lower version, and the same version with other content: 409, the plan stays.
    for version, who in ((2, a), (3, a)):
        status, answer = p.admin("PUT", "/v1/plan", json.dumps(good_plan(who, version)).encode())
        assert status == 409, answer
    assert p.stats()["planVersion"] == 3
    served_by(p, "b")
    assert_no_traceback(p)


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "limpet.cli", "proxy", "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", *args],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_hostile_plan_files_stop_the_start_with_one_line(
    backends: Backends, tmp_path: Path
) -> None:
    a = backends.start("a")
    cases = {
        name: body
        for name, body, _ in hostile_bodies(good_plan(a, version=1))
        if name in ("huge float field", "5000-digit integer", "store port of 5000 digits", "NaN")
    }
    cases["not JSON at all"] = b"\x00\x01 binary"
    for name, body in cases.items():
        path = tmp_path / f"plan-{len(body)}.json"
        path.write_bytes(body)
        done = run_proxy("--plan", str(path))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith(f"limpet proxy: error: --plan {path}: "), (name, lines)
    missing = run_proxy("--plan", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("limpet proxy: error: --plan: No such file")


def test_a_hostile_saved_plan_is_moved_aside_and_the_proxy_starts(
    backends: Backends, proxy: Proxies, tmp_path: Path
) -> None:
    a = backends.start("a")
    state = tmp_path / "state"
    state.mkdir()
    saved = state / "plan.json"
    saved.write_bytes(mutated(good_plan(a, version=5), "backends.0.drainDeadline", 10**400))
    p = proxy.start("--state-dir", str(state))
    assert p.admin("GET", "/readyz")[0] == 503
    aside = list(state.glob("plan.json.corrupt-*"))
    assert len(aside) == 1
    assert not saved.exists()
    assert "ignoring corrupt saved plan" in p.log_text()
    assert "backends[0].drainDeadline" in p.log_text()
    assert p.admin("PUT", "/v1/plan", json.dumps(good_plan(a, version=1)).encode())[0] == 200
    served_by(p, "a")
    assert_no_traceback(p)
