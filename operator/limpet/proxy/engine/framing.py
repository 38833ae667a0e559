"""Chunked framing (RFC 9112 section 7.1): the one place the engine writes chunk framing,
and the trailer fields it forwards.

Data flow: both state machines re-frame chunked bodies with :func:`chunk` and end them
with :func:`last_chunk`, whose trailer section :func:`kept_trailers` filters. Pure.
"""

from __future__ import annotations

from typing import Final

from limpet.proxy.engine.fields import (
    OTHER,
    HeaderClasses,
)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body (RFC 9112 7.1), as parts for ``writelines``; the one
    place the engine writes chunk framing (the last chunk: :func:`last_chunk`)."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


LAST_CHUNK: Final = b"0\r\n\r\n"


# Trailer fields never forwarded (RFC 9110 6.5.1): framing, routing, cookies, forwarding,
# request modifiers and the fields that describe the content. Hop-by-hop ones are dropped
# by their class already.
_TRAILER_BANNED: Final = frozenset(
    {
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"max-forwards",
        b"limpet-session-moved",
        b"www-authenticate",
    }
)


def kept_trailers(trailers: list[tuple[bytes, bytes]], classes: HeaderClasses) -> bytes:
    """The trailer section that is forwarded, serialised (may be empty)."""
    out = []
    for name, value in trailers:
        if classes.get(name) == OTHER and name.lower() not in _TRAILER_BANNED:
            out.append(name + b": " + value + b"\r\n")
    return b"".join(out)


def last_chunk(trailers: list[tuple[bytes, bytes]] | None, classes: HeaderClasses) -> bytes:
    """The last chunk and the filtered trailer section."""
    if trailers is None:
        return LAST_CHUNK
    return b"0\r\n" + kept_trailers(trailers, classes) + b"\r\n"
