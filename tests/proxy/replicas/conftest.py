"""Fixtures shared by the replica tests: the counter backends every test judges by, and a
real ``redis-server`` for the store tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fleet import Counters, RedisServer


@pytest.fixture
def counters() -> Iterator[Counters]:
    factory = Counters()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
