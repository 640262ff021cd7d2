"""The node's clock: monotonic, so a wall-clock step never ends a call.

Twisted's reactors schedule ``callLater`` on ``time.time()``: a step of the
wall clock by +60 s fires every pending timer at once (idle and start
timeouts end calls), and by -60 s holds every playout timer for a minute.
``LoopClock`` keeps the ``IReactorTime`` shape the node and the core use
(``seconds()``, ``callLater`` returning a delayed call with ``active``,
``cancel``, ``reset``) on the asyncio loop's monotonic clock. Records still
carry wall-clock times: the bus converts with ``wall_offset``.

Only the entry point builds one (tests use ``twisted.internet.task.Clock``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class LoopDelayedCall:
    """``IDelayedCall`` over an ``asyncio.TimerHandle``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float,
                 func: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        self._loop = loop
        self._func, self._args, self._kw = func, args, kw
        self._called = self._cancelled = False
        self._handle = loop.call_later(max(0.0, delay), self._run)
        self._at = loop.time() + max(0.0, delay)

    def _run(self) -> None:
        self._called = True
        self._func(*self._args, **self._kw)

    def getTime(self) -> float:
        return self._at

    def active(self) -> bool:
        return not (self._called or self._cancelled)

    def cancel(self) -> None:
        if self.active():
            self._cancelled = True
            self._handle.cancel()

    def reset(self, secondsFromNow: float) -> None:
        if self.active():
            self._handle.cancel()
            self._handle = self._loop.call_later(max(0.0, secondsFromNow), self._run)
            self._at = self._loop.time() + max(0.0, secondsFromNow)

    def delay(self, secondsLater: float) -> None:
        self.reset(self._at - self._loop.time() + secondsLater)


class LoopClock:
    """``seconds()`` and ``callLater`` on the loop's monotonic time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def seconds(self) -> float:
        return self._loop.time()

    def callLater(self, delay: float, func: Callable[..., Any], *args: Any,
                  **kw: Any) -> LoopDelayedCall:
        return LoopDelayedCall(self._loop, delay, func, args, kw)


def wall_offset(clock: Any) -> float:
    """Wall clock minus ``clock``: add it to a time of ``clock`` to get a wall-clock time.

    Rounded to 0.1 ms, so that a clock that already is the wall clock gives exactly 0.
    """
    return round(time.time() - clock.seconds(), 4)
