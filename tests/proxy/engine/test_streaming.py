"""Large bodies stream through the proxy in both directions with bounded memory.

200 MB go up (Content-Length and chunked) and come down (Content-Length, chunked and
close-delimited) while a thread samples the proxy's resident memory from /proc; the peak
must stay far below the body size."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest

from ..backends import PATTERN
from ..conftest import Backend, Backends, Proxies, Proxy, standalone_args

SIZE = 200 * 1024 * 1024
PIECE = 1024 * 1024
# Far below the 200 MB moved (measured growth: about 1 MB).
RSS_GROWTH_LIMIT = 16 * 1024 * 1024


class RssSampler:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proxy.rss())
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def streaming(backends: Backends, proxy: Proxies) -> tuple[Backend, Proxy]:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b))
    # Warm up so the baseline includes the imports and the first connections.
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=60)
    conn.request("POST", "/warm", body=b"x" * 100_000)
    conn.getresponse().read()
    conn.close()
    return b, p


def pieces(total: int) -> Iterator[bytes]:
    block = (PATTERN * (PIECE // len(PATTERN)))[:PIECE]
    sent = 0
    while sent < total:
        n = min(PIECE, total - sent)
        yield block[:n]
        sent += n


def expected_sha(total: int) -> str:
    h = hashlib.sha256()
    for piece in pieces(total):
        h.update(piece)
    return h.hexdigest()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_upload_bounded_memory(streaming: tuple[Backend, Proxy], chunked: bool) -> None:
    _, p = streaming
    baseline = p.rss()
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=120)
    try:
        with RssSampler(p) as sampler:
            if chunked:
                conn.request("PUT", "/upload", body=pieces(SIZE), encode_chunked=True)
            else:
                conn.request(
                    "PUT", "/upload", body=pieces(SIZE), headers={"Content-Length": str(SIZE)}
                )
            resp = conn.getresponse()
            echo = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert echo["body_bytes"] == SIZE
    assert echo["body_sha256"] == expected_sha(SIZE)
    assert sampler.peak - baseline < RSS_GROWTH_LIMIT, (baseline, sampler.peak)


@pytest.mark.parametrize("mode", ["cl", "chunked", "eof"])
def test_large_download_bounded_memory(streaming: tuple[Backend, Proxy], mode: str) -> None:
    _, p = streaming
    baseline = p.rss()
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=120)
    digest = hashlib.sha256()
    got = 0
    try:
        with RssSampler(p) as sampler:
            conn.request("GET", f"/download?size={SIZE}&mode={mode}")
            resp = conn.getresponse()
            assert resp.status == 200
            while chunk := resp.read(PIECE):
                digest.update(chunk)
                got += len(chunk)
                if got == 16 * PIECE:
                    time.sleep(0.5)  # a slow reader: the proxy must pause the backend
    finally:
        conn.close()
    assert got == SIZE
    assert digest.hexdigest() == expected_sha(SIZE)
    assert sampler.peak - baseline < RSS_GROWTH_LIMIT, (baseline, sampler.peak)
