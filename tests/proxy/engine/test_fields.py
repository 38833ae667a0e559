"""Unit tests of ``limpet.proxy.engine.fields``: field classes for every spelling, and
Content-Length as ``int`` reads it."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.proxy.engine import fields


def test_header_class_cache_is_bounded() -> None:
    classes = fields.HeaderClasses(limit=10)
    for i in range(100):
        # As long as X-Forwarded-For and with its first letter: looked up, then cached.
        assert classes.get(b"X-Forwarded-%03d" % i) == fields.OTHER
    assert len(classes.cache) == 10
    assert classes.get(b"PROXY-anything") == fields.DROP


@settings(max_examples=500)
@given(st.binary(max_size=24) | st.text("0123456789 \t_+-x\r\n", max_size=12).map(str.encode))
def test_content_length_reads_as_int_does(value: bytes) -> None:
    try:
        want: int | type[ValueError] = int(value)
    except ValueError:
        want = ValueError
    try:
        got: int | type[ValueError] = fields.content_length(value)
    except ValueError:
        got = ValueError
    assert got == want


_NAMES = st.sampled_from(
    [
        b"Host",
        b"cookie",
        b"CONTENT-LENGTH",
        b"X-Forwarded-Proto",
        b"TE",
        b"Proxy-Authorization",
        b"proxy-",
        b"proxy",
        b"Server",
        b"Date",
        b"Content-Type",
        b"X-Forwarded-Hosts",
        # The usual spellings get compares first, and names of the same lengths.
        b"Cookie",
        b"Connection",
        b"Set-Cookie",
        b"Keep-Alive",
        b"connection",
        b"Content-Length",
        b"Content-Lengtx",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Trailer",
        b"X-Forwarded-For",
        b"X-Forwarded-Fox",
        b"X_Forwarded_For",
        b"Content_Length",
        b"Proxy",
        b"proxy_authorization",
    ]
) | st.binary(min_size=1, max_size=20)


@settings(max_examples=500)
@given(st.lists(_NAMES, max_size=30))
def test_header_classes_match_the_table(names: list[bytes]) -> None:
    # HeaderClasses.get skips the lookup for names that cannot have a class: each answer
    # must be the class the table (and the proxy- prefix) gives the lower-cased name.
    classes = fields.HeaderClasses(limit=8)
    for name in names:
        assert classes.get(name) == _class_of(name)


def _spellings(name: bytes, rnd: random.Random, most: int) -> set[bytes]:
    """Every upper/lower-case spelling of ``name`` (or ``most`` random ones)."""
    letters = [i for i, b in enumerate(name) if chr(b).isalpha()]
    if 2 ** len(letters) <= most:
        masks = range(2 ** len(letters))
    else:
        masks = [rnd.getrandbits(len(letters)) for _ in range(most)]  # type: ignore[assignment]
    out = set()
    for mask in masks:
        b = bytearray(name)
        for bit, i in enumerate(letters):
            if mask >> bit & 1:
                b[i] ^= 0x20
        out.add(bytes(b))
    return out


def _class_of(name: bytes) -> int:
    lower = name.lower()
    if lower in fields._CLASSES:
        return fields._CLASSES[lower]
    # Proxy-*, Proxy (httpoxy), and a classed or Proxy-* name with "_" for "-" (read as
    # that field by CGI/WSGI gateways) are dropped.
    dashed = lower.replace(b"_", b"-")
    if dashed == b"proxy" or dashed.startswith(b"proxy-") or dashed in fields._CLASSES:
        return fields.DROP
    return fields.OTHER


def test_every_spelling_of_every_classed_name_gets_its_class() -> None:
    # HeaderClasses.get answers the usual spelling of a length without a lookup (8a439e1):
    # every other case spelling, and every name one byte off a classed one, must still
    # get the class the table gives (a cold and a warm cache, and one that is full).
    rnd = random.Random(10)
    names: set[bytes] = set()
    for classed in [*fields._CLASSES, b"proxy-authorization", b"proxy"]:
        names |= _spellings(classed, rnd, 2048)
        for i in range(len(classed)):
            for byte in (0x00, 0x09, 0x2D, 0x5F, 0x7F, 0xC3, classed[i] ^ 0x01, classed[i] ^ 0x20):
                names.add(classed[:i] + bytes([byte]) + classed[i + 1 :])
        names.add(classed + b"x")
        names.add(classed[:-1])
    for classes in (fields.HeaderClasses(), fields.HeaderClasses(limit=0)):
        for _ in range(2):  # the second pass reads what the first cached
            for name in sorted(names):
                assert classes.get(name) == _class_of(name), name
