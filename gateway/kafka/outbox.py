"""The node's bounded buffer of records on their way to Kafka.

Why it exists: a broker outage must neither block the reactor nor kill
calls. Records queue here while the producer cannot take them, one queue per
topic partition, so that a partition whose leader is away holds up no other.
When the buffer is full the oldest records go first, and every loss is
written down per call so that a RecordsDropped record can take their place on
the bus: a consumer always learns what it did not get.

Bounds:
- ``max_bytes`` for everything, counting records handed to the producer and
  not yet settled (acknowledged or lost): what is in flight is memory too.
  Each record is charged its value, its headers' names and values (aiokafka
  copies them into every record of a batch) and ``record_overhead``: a tiny
  record costs its Entry, key and queue slots too (measured with tracemalloc:
  297 bytes beyond the value, whatever its size, for a 36-character call id
  as key; a call's headers are one object shared by its records), and a flood
  of 2-byte frames would otherwise hold ten times the bound. The node uses
  ``RECORD_OVERHEAD_BYTES``.
- ``max_age_s``: no queued record is older than this (seconds of audio the
  buffer carries through an outage).
- ``call_share`` for one call's records still queued: a call that floods
  loses its own oldest records first, never another call's.

Precious records (a call's ``started`` and ``ended``, and its state record
and tombstone on the call-state topic) are never dropped for any of these
bounds: without them a bot cannot tell a call began or ended. They are at
most four per call, so they cannot grow without bound.

Records taken by the producer and not sent (no leader within the request
timeout) come back with ``put_back`` at the front of their partition, in
order: they were never written, so sending them again cannot duplicate.

Pure: no Kafka here. ``gateway.kafka.bus`` drains it into the producer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

RECORD_OVERHEAD_BYTES = 320
# How often put() looks for records past max_age_s (the bound holds to within this).
_AGE_CHECK_S = 1.0

TopicPartition = tuple[str, int]


class Headers:
    """Kafka record headers: one object per call, shared by all its records, with the
    bytes its names and values add to each record (counted by the outbox)."""

    __slots__ = ("nbytes", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, bytes]] = ()) -> None:
        # A list: aiokafka's record builder takes nothing else. Never changed.
        self.pairs = list(pairs)
        self.nbytes = sum(len(k.encode()) + len(v) for k, v in self.pairs)

    def __repr__(self) -> str:
        return f"Headers({self.pairs!r})"


NO_HEADERS = Headers()


@dataclass(eq=True, slots=True)
class Entry:
    topic: str
    key: bytes
    # None: a tombstone (compacted topics).
    value: bytes | None
    # For loss accounting; -1 on records that are not part of a call's
    # sequence (the outbound topic has none).
    call_id: str = ""
    record_seq: int = -1
    is_audio: bool = False
    partition: int = 0
    # started / ended (and their call-state records): never dropped to make room.
    precious: bool = False
    # A record that ends the call (its ended, its call-state tombstone): their
    # delivery is reported to the node's lease.
    ends_call: bool = False
    # A loss note: the loss it reports, put back if the note fails.
    loss: Loss | None = None
    headers: Headers = NO_HEADERS
    # Set by the outbox: put order and time, for the age bound.
    order: int = field(default=0, compare=False)
    queued_at: float = field(default=0.0, compare=False)

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


@dataclass
class Loss:
    """What was lost of one call on one topic, not yet reported."""

    records: int = 0
    first_record_seq: int = -1
    last_record_seq: int = -1
    audio_chunks: int = 0
    # The lost records' headers: the note that reports them carries them too (it may
    # be written after the call ended, when the bus has forgotten them).
    headers: Headers = field(default=NO_HEADERS, compare=False)

    def add(self, e: Entry) -> None:
        self.records += 1
        if e.headers.nbytes:
            self.headers = e.headers
        if e.record_seq >= 0:
            # min, not "first seen": a delivery failure of an older record can be
            # noted after newer ones were dropped from the buffer.
            if self.first_record_seq < 0 or e.record_seq < self.first_record_seq:
                self.first_record_seq = e.record_seq
            self.last_record_seq = max(self.last_record_seq, e.record_seq)
        self.audio_chunks += int(e.is_audio)

    def merge(self, other: Loss) -> None:
        self.records += other.records
        if other.headers.nbytes:
            self.headers = other.headers
        self.audio_chunks += other.audio_chunks
        for seq in (other.first_record_seq, other.last_record_seq):
            if seq >= 0:
                if self.first_record_seq < 0 or seq < self.first_record_seq:
                    self.first_record_seq = seq
                self.last_record_seq = max(self.last_record_seq, seq)


class Outbox:
    def __init__(self, max_bytes: int, call_share: int | None = None,
                 record_overhead: int = 0, max_age_s: float = 0.0) -> None:
        self.max_bytes = max_bytes
        self.call_share = max_bytes if call_share is None else call_share
        self.max_age_s = max_age_s
        self._overhead = record_overhead
        self._parts: dict[TopicPartition, deque[Entry]] = {}
        # Precious records queued per partition: a partition of nothing else (the
        # call-state topic's) has nothing to drop, and is not scanned for it.
        self._precious: dict[TopicPartition, int] = {}
        # Each call's queued records per topic (all on one partition), oldest first.
        self._by_call: dict[tuple[str, str], deque[Entry]] = {}
        self._call_bytes: dict[str, int] = {}
        self._topic_names: set[str] = set()
        self._count = 0
        self._age_checked_at = float("-inf")
        self._order = 0
        self._bytes = 0
        self._in_flight_bytes = 0
        # Losses by (call id, topic), in the order they happened (dicts keep
        # order): each is reported on the topic it was lost from.
        self._losses: dict[tuple[str, str], Loss] = {}
        self.dropped_total = 0

    def __len__(self) -> int:
        return self._count

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

    def oldest_age(self, now: float) -> float:
        heads = [q[0].queued_at for q in self._parts.values() if q]
        return now - min(heads) if heads else 0.0

    def head_age(self, tp: TopicPartition, now: float) -> float:
        """How long the partition's oldest waiting record has waited (0: none waits)."""
        q = self._parts.get(tp)
        return now - q[0].queued_at if q else 0.0

    def partitions(self) -> list[TopicPartition]:
        """Partitions with records waiting."""
        return [tp for tp, q in self._parts.items() if q]

    # --- in --------------------------------------------------------------------

    def put(self, entry: Entry, now: float = 0.0) -> int:
        """Queue a record; returns how many older records were dropped to make room."""
        self._order += 1
        entry.order, entry.queued_at = self._order, now
        self._link(entry, front=False)
        dropped = 0
        cid = entry.call_id
        if cid:
            while self._call_bytes[cid] > self.call_share:
                victim = self._oldest_of_call(cid, spare=entry)
                if victim is None:
                    break
                self._drop(victim)
                dropped += 1
        while self._bytes + self._in_flight_bytes > self.max_bytes:
            victim = self._oldest(spare=entry)
            if victim is None:
                break
            self._drop(victim)
            dropped += 1
        if self.max_age_s and now - self._age_checked_at >= _AGE_CHECK_S:
            # At most once a second: finding the oldest record looks at every partition.
            self._age_checked_at = now
            while True:
                victim = self._oldest(spare=entry)
                if victim is None or now - victim.queued_at <= self.max_age_s:
                    break
                self._drop(victim)
                dropped += 1
        return dropped

    def put_back(self, entries: Sequence[Entry]) -> None:
        """Records taken and never sent go back to the front of their partition, in order."""
        for e in reversed(entries):
            self._in_flight_bytes -= self._size(e)
            self._link(e, front=True)

    def put_note(self, note: Entry) -> None:
        """A loss note goes to the front of its partition: what it stands for is older."""
        self._link(note, front=True)

    def record_loss(self, e: Entry) -> None:
        """Note a record that will never reach the broker (dropped here or failed delivery)."""
        self.dropped_total += 1
        if e.call_id:
            self._loss(e.call_id, e.topic).add(e)

    def restore_loss(self, note: Entry) -> None:
        """A loss note that was not delivered: its loss is owed again."""
        if note.loss is not None:
            self._loss(note.call_id, note.topic).merge(note.loss)

    # --- out -------------------------------------------------------------------

    def take_partition(self, tp: TopicPartition, limit: int,
                       held: AbstractSet[str] = frozenset()) -> list[Entry]:
        """Up to ``limit`` records of one partition, oldest first; in flight until settled.

        Stops at the first record of a call in ``held``: the partition's order is kept.
        """
        q = self._parts.get(tp)
        out: list[Entry] = []
        while q and len(out) < limit:
            if held and q[0].call_id in held:
                break
            out.append(self._hand_on(q.popleft()))
        return out

    def take(self, limit: int) -> list[Entry]:
        """Up to ``limit`` records of any partition, oldest first (tests, shutdown)."""
        out: list[Entry] = []
        while len(out) < limit:
            heads = [q for q in self._parts.values() if q]
            if not heads:
                break
            q = min(heads, key=lambda d: d[0].order)
            out.append(self._hand_on(q.popleft()))
        return out

    def count_in_flight(self, entries: Iterable[Entry]) -> None:
        """Records made outside the buffer handed to the producer."""
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

    def repartition(self, topic: str, count: int, pick: Callable[[bytes], int]) -> int:
        """The topic now has ``count`` partitions: queued records of partitions that no
        longer exist move to ``pick(key)``, in order. Returns how many moved."""
        moved = 0
        for tp in [tp for tp in self._parts if tp[0] == topic and tp[1] >= count]:
            self._precious.pop(tp, None)
            for e in self._parts.pop(tp):
                e.partition = pick(e.key)
                self._parts.setdefault(e.tp, deque()).append(e)
                self._count_precious(e, 1)
                moved += 1
        return moved

    # --- internals ---------------------------------------------------------------

    def _size(self, e: Entry) -> int:
        value = 0 if e.value is None else len(e.value)
        return value + e.headers.nbytes + self._overhead

    def _count_precious(self, e: Entry, n: int) -> None:
        if e.precious:
            self._precious[e.tp] = self._precious.get(e.tp, 0) + n

    def _loss(self, call_id: str, topic: str) -> Loss:
        key = (call_id, topic)
        loss = self._losses.get(key)
        if loss is None:
            loss = self._losses[key] = Loss()
        return loss

    def _link(self, e: Entry, front: bool) -> None:
        q = self._parts.get(e.tp)
        if q is None:
            q = self._parts[e.tp] = deque()
        size = self._size(e)
        self._bytes += size
        self._count += 1
        if front:
            q.appendleft(e)
        else:
            q.append(e)
        self._count_precious(e, 1)
        self._topic_names.add(e.topic)
        if e.call_id:
            mine = self._by_call.get((e.call_id, e.topic))
            if mine is None:
                mine = self._by_call[(e.call_id, e.topic)] = deque()
            if front:
                mine.appendleft(e)
            else:
                mine.append(e)
            self._call_bytes[e.call_id] = self._call_bytes.get(e.call_id, 0) + size

    def _hand_on(self, e: Entry) -> Entry:
        """``e`` left its partition's queue for the producer."""
        self._unlink_call(e)
        self._count_precious(e, -1)
        size = self._size(e)
        self._bytes -= size
        self._count -= 1
        self._in_flight_bytes += size
        return e

    def _drop(self, e: Entry) -> None:
        self._parts[e.tp].remove(e)
        self._unlink_call(e)
        self._count_precious(e, -1)
        self._bytes -= self._size(e)
        self._count -= 1
        self.record_loss(e)

    def _unlink_call(self, e: Entry) -> None:
        if not e.call_id:
            return
        key = (e.call_id, e.topic)
        mine = self._by_call[key]
        if mine[0] is e:
            mine.popleft()
        else:
            mine.remove(e)
        if not mine:
            del self._by_call[key]
        held = self._call_bytes[e.call_id] - self._size(e)
        if held:
            self._call_bytes[e.call_id] = held
        else:
            del self._call_bytes[e.call_id]

    @staticmethod
    def _first_droppable(q: deque[Entry], spare: Entry) -> Entry | None:
        # Precious records are at most two per call in a topic and sit at the ends
        # of its run: the scan stops within a few places.
        for e in q:
            if not e.precious and e.loss is None and e is not spare:
                return e
        return None

    def _oldest_of_call(self, call_id: str, spare: Entry) -> Entry | None:
        # A call has records on at most three topics (inbound, outbound, call state).
        found = [self._first_droppable(self._by_call[(call_id, t)], spare)
                 for t in self._topic_names if (call_id, t) in self._by_call]
        live = [e for e in found if e is not None]
        return min(live, key=lambda e: e.order) if live else None

    def _oldest(self, spare: Entry) -> Entry | None:
        heads = [self._first_droppable(q, spare) for tp, q in self._parts.items()
                 if len(q) > self._precious.get(tp, 0)]
        found = [e for e in heads if e is not None]
        return min(found, key=lambda e: e.order) if found else None
