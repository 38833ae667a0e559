"""Fixtures shared by the replica tests: the counter backends every test judges by."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fleet import Counters


@pytest.fixture
def counters() -> Iterator[Counters]:
    factory = Counters()
    try:
        yield factory
    finally:
        factory.close()
