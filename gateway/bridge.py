"""The one bridge between asyncio and Twisted.

The node runs on Twisted's asyncio reactor, so both share one event loop:
aiokafka's coroutines and futures become Deferreds here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def as_deferred(aw: Awaitable[T]) -> Deferred[T]:
    """Run a coroutine or future on the shared loop; errors arrive as Failures, never raised."""
    return Deferred.fromFuture(asyncio.ensure_future(aw))


async def wait_deferred(d: Deferred[Any]) -> Any:
    """Await a Deferred from asyncio code."""
    return await d.asFuture(asyncio.get_running_loop())
