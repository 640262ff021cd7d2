"""The node's bounded buffer of records on their way to Kafka.

Why it exists: a broker outage must neither block the reactor nor kill
calls. Records queue here while the producer cannot take them. When the
buffer is full the oldest records go first, and every loss is written down
per call so that a RecordsDropped record can take their place on the bus:
a consumer always learns what it did not get.

Two bounds, both in bytes:
- ``max_bytes`` for everything, counting records handed to the producer
  and not yet settled (acknowledged or lost): what is in flight is memory too.
- ``call_share`` for one call's records still queued: a call that floods
  loses its own oldest records first, never another call's.

Bytes are counted as each record's value plus ``record_overhead``: a tiny
record costs its Entry, key and queue slots too (measured 286 bytes beyond a
68-byte value), and a flood of 2-byte frames would otherwise hold ten times
the bound. The node uses ``RECORD_OVERHEAD_BYTES``.

Pure: no Kafka here. ``gateway.bus`` drains it into the producer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

RECORD_OVERHEAD_BYTES = 320


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
    def __init__(self, max_bytes: int, call_share: int | None = None,
                 record_overhead: int = 0) -> None:
        self.max_bytes = max_bytes
        self._overhead = record_overhead
        self.call_share = max_bytes if call_share is None else call_share
        # Oldest first. An entry dropped for its call's share stays here, dead,
        # until the drain or an eviction reaches it.
        self._entries: deque[Entry] = deque()
        self._dead: set[int] = set()
        self._by_call: dict[str, deque[Entry]] = {}
        self._call_bytes: dict[str, int] = {}
        self._bytes = 0
        self._in_flight_bytes = 0
        # Losses by (call id, topic), in the order they happened (dicts keep
        # order): each is reported on the topic it was lost from.
        self._losses: dict[tuple[str, str], Loss] = {}
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._entries) - len(self._dead)

    @property
    def bytes(self) -> int:
        """Bytes of records queued here."""
        return self._bytes

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of records taken by the producer and not settled yet."""
        return self._in_flight_bytes

    def call_bytes(self, call_id: str) -> int:
        return self._call_bytes.get(call_id, 0)

    def put(self, entry: Entry) -> int:
        """Queue a record; returns how many older records were dropped to make room."""
        self._entries.append(entry)
        size = self._size(entry)
        self._bytes += size
        dropped = 0
        cid = entry.call_id
        if cid:
            mine = self._by_call.get(cid)
            if mine is None:
                mine = self._by_call[cid] = deque()
            mine.append(entry)
            held = self._call_bytes[cid] = self._call_bytes.get(cid, 0) + size
            while held > self.call_share and len(mine) > 1:
                old = mine.popleft()
                self._dead.add(id(old))
                held -= self._size(old)
                self._forget(old)
                self.record_loss(old)
                dropped += 1
            self._call_bytes[cid] = held
        while self._bytes + self._in_flight_bytes > self.max_bytes and len(self) > 1:
            old = self._pop_oldest()
            self._unlink(old)
            self.record_loss(old)
            dropped += 1
        return dropped

    def record_loss(self, e: Entry) -> None:
        """Note a record that will never reach the broker (dropped here or failed delivery)."""
        self.dropped_total += 1
        if e.call_id:
            key = (e.call_id, e.topic)
            loss = self._losses.get(key)
            if loss is None:
                loss = self._losses[key] = Loss()
            loss.add(e)

    def take(self, limit: int) -> list[Entry]:
        """Up to ``limit`` records, oldest first, handed on: their bytes count as in flight
        until ``settle``."""
        out: list[Entry] = []
        while len(self) and len(out) < limit:
            e = self._pop_oldest()
            self._unlink(e)
            self._in_flight_bytes += self._size(e)
            out.append(e)
        return out

    def count_in_flight(self, entries: Iterable[Entry]) -> None:
        """Records made outside the buffer (loss notes) handed to the producer."""
        for e in entries:
            self._in_flight_bytes += self._size(e)

    def settle(self, entries: Iterable[Entry]) -> None:
        """Records taken earlier were acknowledged or lost: their bytes are free."""
        for e in entries:
            self._in_flight_bytes -= self._size(e)

    def take_losses(self) -> dict[tuple[str, str], Loss]:
        losses, self._losses = self._losses, {}
        return losses

    @property
    def has_losses(self) -> bool:
        return bool(self._losses)

    # --- internals ---------------------------------------------------------------

    def _size(self, e: Entry) -> int:
        return len(e.value) + self._overhead

    def _pop_oldest(self) -> Entry:
        """The oldest live entry, removed from the order (dead ones are skipped)."""
        entries, dead = self._entries, self._dead
        while True:
            e = entries.popleft()
            if dead and id(e) in dead:
                dead.discard(id(e))
                continue
            return e

    def _unlink(self, e: Entry) -> None:
        """``e`` left the order: drop it from its call's queue (it is that queue's oldest)."""
        self._bytes -= self._size(e)
        cid = e.call_id
        if cid:
            mine = self._by_call[cid]
            mine.popleft()
            held = self._call_bytes[cid] - self._size(e)
            if mine:
                self._call_bytes[cid] = held
            else:
                del self._by_call[cid], self._call_bytes[cid]

    def _forget(self, e: Entry) -> None:
        """``e`` was dropped from its call's queue but stays in the order, dead."""
        self._bytes -= self._size(e)
