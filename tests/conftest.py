"""Shared fixtures. The broker is real: started here once per session, or given.

``KGW_TEST_KAFKA=host:port`` points the tests at a broker that is already
running; otherwise the project's own local broker is started (and its jars
fetched on first use). Broker tests never skip: a missing Java or Maven is an
error, so CI cannot pass without them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("KGW_TEST_KAFKA")
    if given:
        yield given
        return
    from gateway.localkafka import LocalKafka

    kafka = LocalKafka()
    kafka.start()
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix per test, so tests sharing a broker never see each other's records."""
    return "t" + uuid.uuid4().hex[:12]
