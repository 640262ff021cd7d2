"""The node's bounded buffer of records on their way to Kafka.

Why it exists: a broker outage must neither block the reactor nor kill
calls. Records queue here while the producer cannot take them. When the
buffer is full the oldest records go first, and every loss is written down
per call so that a RecordsDropped record can take their place on the bus:
a consumer always learns what it did not get.

Pure: no Kafka here. ``gateway.bus`` drains it into the producer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    topic: str
    key: bytes
    value: bytes
    # For loss accounting; -1 on records that are not part of a call's
    # sequence (the outbound topic has none).
    call_id: str = ""
    record_seq: int = -1
    is_audio: bool = False
    partition: int = 0


@dataclass
class Loss:
    """What was lost of one call on one topic, not yet reported."""

    records: int = 0
    first_record_seq: int = -1
    last_record_seq: int = -1
    audio_chunks: int = 0

    def add(self, e: Entry) -> None:
        self.records += 1
        if e.record_seq >= 0:
            # min, not "first seen": a delivery failure of an older record can be
            # noted after newer ones were dropped from the buffer.
            if self.first_record_seq < 0 or e.record_seq < self.first_record_seq:
                self.first_record_seq = e.record_seq
            self.last_record_seq = max(self.last_record_seq, e.record_seq)
        self.audio_chunks += int(e.is_audio)


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self._bytes = 0
        # Losses by (call id, topic), in the order they happened (dicts keep
        # order): each is reported on the topic it was lost from.
        self._losses: dict[tuple[str, str], Loss] = {}
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, entry: Entry) -> int:
        """Queue a record; returns how many older records were dropped to make room."""
        self._entries.append(entry)
        self._bytes += len(entry.value)
        dropped = 0
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self.record_loss(self._entries.popleft(), count_bytes=True)
            dropped += 1
        return dropped

    def record_loss(self, e: Entry, count_bytes: bool = False) -> None:
        """Note a record that will never reach the broker (dropped here or failed delivery)."""
        if count_bytes:
            self._bytes -= len(e.value)
        self.dropped_total += 1
        if e.call_id:
            key = (e.call_id, e.topic)
            loss = self._losses.get(key)
            if loss is None:
                loss = self._losses[key] = Loss()
            loss.add(e)

    def take(self, limit: int) -> list[Entry]:
        """Up to ``limit`` records, oldest first, removed from the buffer."""
        out: list[Entry] = []
        entries = self._entries
        while entries and len(out) < limit:
            e = entries.popleft()
            self._bytes -= len(e.value)
            out.append(e)
        return out

    def take_losses(self) -> dict[tuple[str, str], Loss]:
        losses, self._losses = self._losses, {}
        return losses

    @property
    def has_losses(self) -> bool:
        return bool(self._losses)
