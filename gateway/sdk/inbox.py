"""A call's bounded queue of records for its handler, telling the offsets when each is taken."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

Done = Callable[[], None]


class Inbox(Generic[T]):
    """FIFO of at most ``limit`` items; beyond it the oldest is dropped (and counted).

    Each item comes with ``done``, called when the item leaves the inbox, taken or
    dropped, so its offset may be committed. ``close`` ends iteration once the
    items already in it are taken.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[T, Done]] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, done: Done) -> None:
        if self.closed:
            done()
            return
        self._items.append((item, done))
        while len(self._items) > self._limit:
            _, old_done = self._items.popleft()
            self.dropped += 1
            old_done()
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def release(self) -> None:
        """Drop what is queued *without* handing it over: another consumer will read it
        again (the partition moved), so its offsets must not be committed here."""
        self.close()
        self._items.clear()

    def discard(self) -> None:
        """Hand over everything still queued without delivering it (nobody will take it)."""
        self.close()
        while self._items:
            self._items.popleft()[1]()

    async def get(self) -> T | None:
        """The next item, or None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        item, done = self._items.popleft()
        done()
        return item
