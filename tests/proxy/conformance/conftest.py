"""The conformance rig: one real ``limpet proxy`` process in front of one h11 recording
backend (:mod:`tests.proxy.oracle`), shared by the vectors of a module.

:meth:`Rig.exchange` sends one client message on a fresh connection and returns what the
client got and what the backend received; every call also applies the oracle's rule
(:func:`~tests.proxy.oracle.check_exchange`) and checks that the backend never saw bytes
that h11 rejects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

from ..conftest import Proxies, Proxy
from ..oracle import ClientResult, Received, RecordingBackend, check_exchange, send_raw


@dataclass
class Rig:
    proxy: Proxy
    backend: RecordingBackend

    def exchange(
        self,
        data: bytes,
        *,
        method: bytes = b"GET",
        chunks: Iterable[bytes] | None = None,
        oracle: bool = True,
        streamed: bool = False,
        settle: float = 0.15,
    ) -> tuple[ClientResult, list[Received]]:
        """``streamed``: the error may come after the head went out (a broken chunk), so
        an incomplete message at the backend is allowed; a complete one never is."""
        self.backend.take(settle=min(settle, 0.05))
        backend = self.backend
        partial, resets, errors = backend.partial, backend.resets, len(backend.errors)
        client = send_raw(self.proxy.address, data, method=method, chunks=chunks)
        received = self.backend.take(settle=settle)
        assert self.backend.errors[errors:] == [], "the proxy sent bytes h11 rejects"
        if not streamed and client.status is not None and client.status >= 400:
            # Refused: not even an incomplete message may have reached the backend, nor a
            # reset that would hide one (a reset drops bytes not yet read).
            assert (backend.partial, backend.resets) == (partial, resets), "head forwarded"
        if oracle:
            problem = check_exchange(data, client, received)
            assert problem is None, problem
        return client, received

    def warm(self) -> None:
        """Leave an idle pooled backend connection, so that anything the proxy would
        forward goes out at once (a dial would lose the race against the refusal)."""
        client, received = self.exchange(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (client.status, len(received)) == (200, 1)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    backend = RecordingBackend()
    proxies = Proxies(tmp_path_factory.mktemp("conformance"))
    try:
        p = proxies.start(
            "--backend",
            f"s1=127.0.0.1:{backend.port}",
            "--affinity",
            "cookie",
            "--max-headers",
            "50",
            "--max-header-bytes",
            "8192",
        )
        yield Rig(p, backend)
    finally:
        proxies.close()
        backend.close()
