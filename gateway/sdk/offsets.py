"""Which offset of a partition may be committed: the first record not yet handed to the bot.

Records of one partition belong to many calls, and each call's handler takes
them at its own pace, so a record is committed only once it and every record
before it on its partition has been handed over (yielded to the bot, or
skipped on purpose: a duplicate, a stale backlog, a call nobody handles).
That is what makes delivery at-least-once: after a crash the new owner
starts at the first record this instance had not handed over.
"""

from __future__ import annotations

from collections import deque


class Token:
    """One record's place in its partition; ``done()`` once the record is handed over."""

    __slots__ = ("offset", "handed", "_owner")

    def __init__(self, offset: int, owner: PartitionOffsets) -> None:
        self.offset = offset
        self.handed = False
        self._owner = owner

    def done(self) -> None:
        if not self.handed:
            self.handed = True
            self._owner._advance()


class PartitionOffsets:
    """Records of one partition in offset order, and the commit point they allow."""

    def __init__(self, start: int | None = None) -> None:
        self._pending: deque[Token] = deque()
        # The next offset to commit (Kafka commits "the next record to read").
        self.commit_point: int | None = start

    def received(self, offset: int) -> Token:
        token = Token(offset, self)
        self._pending.append(token)
        return token

    def _advance(self) -> None:
        while self._pending and self._pending[0].handed:
            self.commit_point = self._pending.popleft().offset + 1

    @property
    def outstanding(self) -> int:
        """Records received but not yet handed over (bounded by the calls' inboxes)."""
        return len(self._pending)
