"""Closing aiokafka clients within a bound, whatever the broker is doing.

aiokafka's ``stop()`` flushes and can wait for a broker that is away for as
long as its request timeout, or longer; a node shutting down (SIGTERM during
an outage) must not wait that long.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaError
from twisted.logger import Logger

log = Logger()

CLOSE_TIMEOUT_S = 5.0


async def stop_within(clients: tuple[Any, ...], what: str,
                      timeout: float = CLOSE_TIMEOUT_S) -> None:
    """``stop()`` each client (None ones skipped), giving each at most ``timeout`` seconds."""
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.stop(), timeout)
        except (TimeoutError, KafkaError, OSError):
            log.warn("a {what} client did not close within {t}s", what=what, t=timeout)
