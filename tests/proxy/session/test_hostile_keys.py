"""Session keys from a hostile client against a real ``limpet proxy`` process, whatever its
build (compiled with mypyc under ``make test``): tampered, truncated, oversized and
mis-encoded LB cookies and AppCookie companions; header and query keys with odd bytes;
X-Forwarded-For client addresses in every spelling (IPv6, IPv4-mapped, zone ids, ports,
junk); and many distinct keys.

A bad key is never an error page: the request is served by a real backend as a new
session (a rejected cookie counted by reason and replaced by a fresh one), a good key
keeps its backend, equal addresses in different spellings are one session, and the
proxy stays up with no traceback in its log. The oracle is the backends' own answers
(``/who`` names the backend that served) and, for cookies, the proxy's counters read
back through the admin API.
"""

from __future__ import annotations

import base64

from ..conftest import Backend, Backends, Conn, Proxies, Proxy, Response


def get(p: Proxy, headers: list[tuple[bytes, bytes]], target: bytes = b"/who") -> Response:
    """One request with exactly these header bytes; a 200 from a backend, or it fails."""
    with Conn(p.address) as c:
        head = [b"GET " + target + b" HTTP/1.1", b"Host: shop.test"]
        c.send(b"\r\n".join(head + [k + b": " + v for k, v in headers]) + b"\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, (headers, target, r.status, r.body[:200])
    return r


def who(r: Response) -> str:
    backend: str = r.json()["backend"]
    return backend


def start(backends: Backends, proxy: Proxies, *args: str) -> tuple[Proxy, list[Backend]]:
    pool = [backends.start(name) for name in ("a", "b", "c")]
    addrs = [arg for b in pool for arg in ("--backend", f"{b.id}={b.address}")]
    return proxy.start(*addrs, *args), pool


def healthy(p: Proxy) -> None:
    assert p.proc.poll() is None
    log = p.log_text()
    assert "Traceback" not in log, log[-3000:]


def test_tampered_lb_cookies_start_new_sessions_and_good_ones_stick(
    backends: Backends, proxy: Proxies
) -> None:
    p, _ = start(backends, proxy)
    first = get(p, [])
    home = who(first)
    cookie = first.header("Set-Cookie")
    assert cookie is not None
    value = cookie.split(";")[0].partition("=")[2]
    raw = base64.urlsafe_b64decode(value + "==")
    flipped = bytearray(raw)
    flipped[30] ^= 1
    hostile = {
        "truncated": value[:-5].encode(),
        "one bit flipped": base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"="),
        "oversized": b"A" * 7000,
        "valid and trailing junk": value.encode() + b"A" * 800,
        "padded": value.encode() + b"==",
        "not ASCII": b"\xe9\xff\x80",
        "empty": b"",
        "version 2 (a companion) as an LB cookie": base64.urlsafe_b64encode(
            b"\x02" + raw[1:]
        ).rstrip(b"="),
    }
    before = p.stats()["rejectedCookies"]
    for what, bad in hostile.items():
        r = get(p, [(b"Cookie", b"LIMPET=" + bad)])
        fresh = r.header("Set-Cookie")
        assert fresh is not None, what  # a new session, with a new signed cookie
        assert fresh.split(";")[0] != "LIMPET=" + value, what
    after = p.stats()["rejectedCookies"]
    assert sum(after.values()) - sum(before.values()) == len(hostile)
    assert after["tampered"] > before["tampered"]
    assert after["garbage"] > before["garbage"]
    # The good cookie still sticks, also next to junk and when sent twice; so does its
    # spelling in the standard base64 alphabet (the same signed bytes).
    for header in (
        b"LIMPET=" + value.encode(),
        b"LIMPET=" + value.replace("-", "+").replace("_", "/").encode(),
        b'LIMPET="' + value.encode() + b'"',
        b"a=1; LIMPET=" + value.encode() + b"; LIMPET=junk",
        b"; ;;x; LIMPET=" + value.encode(),
        b"; ".join(b"c%d=%d" % (i, i) for i in range(500)) + b"; LIMPET=" + value.encode(),
    ):
        assert who(get(p, [(b"Cookie", header)])) == home, header[:80]
    healthy(p)


def test_app_cookie_companions_tampered_or_alone_are_served(
    backends: Backends, proxy: Proxies
) -> None:
    p, _ = start(backends, proxy, "--affinity", "app-cookie:JSID")
    # The app sets its cookie: the backend's answer carries the companion.
    with Conn(p.address) as c:
        r = c.request("GET", "/setcookie?name=JSID&value=s1")
    assert r.status == 200, r.body
    companion = next(
        (v.split(";")[0] for v in r.all("Set-Cookie") if not v.startswith("JSID=")), None
    )
    assert companion is not None, r.all("Set-Cookie")
    home = who(r)
    name, _, value = companion.partition("=")
    pair = f"JSID=s1; {companion}".encode()
    assert who(get(p, [(b"Cookie", pair)])) == home
    for bad in (
        value[:-3],
        value[:20] + ("A" if value[20] != "A" else "B") + value[21:],
        "A" * 5000,
        "\xe9",
    ):
        cookie = f"JSID=s1; {name}={bad}".encode("latin-1")
        assert who(get(p, [(b"Cookie", cookie)])) in ("a", "b", "c")
    # The companion with another app cookie value: bound to s1, so refused, still served.
    assert who(get(p, [(b"Cookie", f"JSID=other; {companion}".encode())])) in ("a", "b", "c")
    assert who(get(p, [(b"Cookie", f"{companion}".encode())])) in ("a", "b", "c")
    # ... and with an app-cookie value as long as the header allows (its MAC is the
    # session id the companion is checked against).
    long = "L" * 7_000
    assert who(get(p, [(b"Cookie", f"JSID={long}; {companion}".encode())])) in ("a", "b", "c")
    assert sum(p.stats()["appCookie"].values()) >= 6
    healthy(p)


def test_header_and_query_keys_with_odd_bytes_are_keys_like_any_other(
    backends: Backends, proxy: Proxies
) -> None:
    p, _ = start(backends, proxy, "--affinity", "header:X-Session")
    odd = [
        b"\xff\xfe",
        b"\x80abc",
        "\u6f22\u5b57".encode(),
        b"=",
        b"%00",
        b"a" * 7000,
        b"\t x \t",
        b'"quoted"',
    ]
    homes = {v: who(get(p, [(b"X-Session", v)])) for v in odd}
    for _ in range(2):
        for v, home in homes.items():
            assert who(get(p, [(b"X-Session", v)])) == home, v[:20]
    # Absent or blank: no key, a placement of its own, never an error.
    for blank in (b"", b"   "):
        assert who(get(p, [(b"X-Session", blank)])) in ("a", "b", "c")
    healthy(p)
    q, _ = start(backends, proxy, "--affinity", "query:sid")
    targets = [
        b"/who?sid=%00",
        b"/who?sid=%",
        b"/who?sid=" + b"z" * 6000,
        b"/who?x=1&&&&sid=first&sid=second",
        b"/who?" + b"&".join(b"x%d=1" for i in range(600)) + b"&sid=last",
        b"/who?sid=%F0%9F%A6%80",
    ]
    homes_q = {t: who(get(q, [], t)) for t in targets}
    for t, home in homes_q.items():
        assert who(get(q, [], t)) == home, t[:40]
    for t in (b"/who?sid=", b"/who?sid", b"/who?", b"/who"):
        assert who(get(q, [], t)) in ("a", "b", "c")
    healthy(q)


def test_client_addresses_in_every_spelling_are_one_session_each(
    backends: Backends, proxy: Proxies
) -> None:
    p, _ = start(backends, proxy, "--affinity", "client-ip", "--trusted-proxy", "127.0.0.0/8")
    # Each group: one client address, spelled as proxies and attackers spell it.
    groups = [
        [f"10.0.{i}.9", f"::ffff:10.0.{i}.9", f"10.0.{i}.9:4431", f"[::ffff:10.0.{i}.9]:80"]
        for i in range(6)
    ] + [
        [f"2001:db8:{i}::1", f"[2001:db8:{i}::1]", f"[2001:db8:{i}::1]:443", f"2001:db8:{i}::7"]
        for i in range(6)  # the default IPv6 prefix is /64: ::7 is the same client
    ]
    groups.append(["fe80::1%eth0", "fe80::1", "[fe80::1%25eth0]:80", "fe80::1%lo"])
    for group in groups:
        seen = {who(get(p, [(b"X-Forwarded-For", s.encode())])) for s in group}
        assert len(seen) == 1, (group, seen)
    # Junk in the header: the walk stops at the last trusted hop (the peer), served.
    for junk in (b"garbage", b", , ,", b"\xff\xfe", b"999.1.1.1", b"unknown", b"1.2.3.4%"):
        assert who(get(p, [(b"X-Forwarded-For", junk)])) in ("a", "b", "c")
    # A long chain (700 hops) is read from the right: its last untrusted hop is the client.
    chain = b", ".join([b"192.0.2.1"] * 699 + [b"10.0.0.9"])
    assert who(get(p, [(b"X-Forwarded-For", chain)])) == who(
        get(p, [(b"X-Forwarded-For", b"10.0.0.9")])
    )
    healthy(p)


def test_many_distinct_keys_stay_within_the_learned_table(
    backends: Backends, proxy: Proxies
) -> None:
    p, _ = start(backends, proxy, "--affinity", "header:X-Session")
    rss = p.rss()
    served: dict[str, int] = {}
    with Conn(p.address) as c:
        for i in range(3000):
            r = c.request("GET", "/who", headers={"X-Session": f"k-{i}-\u00e9".encode().hex()})
            assert r.status == 200
            served[who(r)] = served.get(who(r), 0) + 1
    assert set(served) == {"a", "b", "c"}, served
    table = p.stats()["learned"]["header"]
    assert 0 < table["entries"] <= table["capacity"], table
    grown = (p.rss() - rss) / 2**20
    print(f"3000 distinct header keys: {served}, table {table}, RSS +{grown:.1f} MiB")
    healthy(p)
