"""Fetching one call's records from the bus, and listing calls: what ``audit`` and
``replay`` read. Public aiokafka APIs only, no consumer group.

A call's records sit on one partition of inbound and of outbound: Kafka's default
partition of its key (murmur2, as the node's producer places them). Reading starts at
the call's start time (``offsets_for_times``): the one given (``since_us``), else the
time of its ``started`` record in the call-state topic (live calls) or in the
``calls.started`` topic (every call, read newest first), else ``lookback_s`` ago.
Inbound is read until the call's ``ended`` or the end offset taken at the start (a
live call: what is there so far); outbound until its end offset
taken ``OUTBOUND_SETTLE_S`` after the call's end (what the node sent last may still be
in flight when ``ended`` is read), or once its records are that far past the end.
Records of other calls on the partition are skipped by key, never decoded. A call id
used again (a provider that repeats a uuid) yields the last call read: a ``started``
starts the collection afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from gateway import records, topics
from gateway.kafka_access import Target, options_of

__all__ = ["CallRecords", "CallRow", "fetch_call", "list_calls", "partition_of"]

OUTBOUND_SETTLE_S = 2.0
_STATE_MARGIN_S = 1.0  # read from a little before the started record's own time
_POLL_MS = 500


@dataclass
class CallRecords:
    inbound: list[Any] = field(default_factory=list)
    outbound: list[Any] = field(default_factory=list)
    partition: int = 0
    since_us: int = 0


@dataclass(frozen=True)
class CallRow:
    call_id: str
    node_id: str
    started_us: int | None
    duration_ms: int | None
    end_reason: str | None


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partition of ``key``, as aiokafka's DefaultPartitioner chooses it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def fetch_call(kafka: Target, prefix: str, call_id: str, *, since_us: int | None,
                     lookback_s: float, wait_s: float = 0.0,
                     outbound: bool = True) -> CallRecords:
    """The call's decoded inbound and outbound records, each topic in order.

    ``wait_s`` above 0: a call not ended by the end of the partition is waited for that
    long (a call just placed), reading its records as they come. ``outbound`` False:
    the inbound side alone (what a replay places).
    """
    key = call_id.encode()
    inbound, state = topics.inbound_topic(prefix), topics.state_topic(prefix)
    index = topics.started_topic(prefix)
    counts = await _partition_counts(kafka, [inbound, state, index])
    if not counts.get(inbound):
        raise LookupError(f"topic {inbound} does not exist")
    number = partition_of(key, counts[inbound])
    consumer = AIOKafkaConsumer(**options_of(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        if since_us is None and counts.get(state):
            since_us = await _started_in_state(consumer, state, number, key)
        if since_us is None and counts.get(index):
            since_us = await _started_in_index(
                consumer, TopicPartition(index, partition_of(key, counts[index])), key,
                lookback_s)
        if since_us is None:
            since_us = int((time.time() - lookback_s) * 1e6)
        out = CallRecords(partition=number, since_us=since_us)
        tp_in = TopicPartition(inbound, number)
        tp_out = TopicPartition(topics.outbound_topic(prefix), number)
        consumer.assign([tp_in, tp_out])
        start = await _offsets_at(consumer, [tp_in, tp_out], since_us)
        ends = await consumer.end_offsets([tp_in, tp_out])

        def is_end(rec: Any) -> bool:
            return rec.WhichOneof("body") == "ended"

        deadline = time.monotonic() + wait_s
        await _read(consumer, tp_in, start[tp_in], ends[tp_in], key, records.decode_inbound,
                    out.inbound, stop=is_end, restart=_is_start)
        while not (out.inbound and is_end(out.inbound[-1])) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_MS / 1000)  # a call still going: read what came since
            position = await consumer.position(tp_in)
            (end,) = (await consumer.end_offsets([tp_in])).values()
            await _read(consumer, tp_in, position, end, key, records.decode_inbound,
                        out.inbound, stop=is_end, restart=_is_start)
        ended = next((r for r in out.inbound if is_end(r)), None)
        if not outbound:
            return out
        started = next((r for r in out.inbound if _is_start(r)), None)
        begun_us = started.time_unix_us if started is not None else 0
        limit_us: int | None = None
        if ended is not None:
            limit_us = ended.time_unix_us + int(OUTBOUND_SETTLE_S * 1e6)
            wait = limit_us / 1e6 - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, OUTBOUND_SETTLE_S))
            ends = await consumer.end_offsets([tp_out])

        def past_end(rec: Any) -> bool:
            return limit_us is not None and rec.sent_unix_us > limit_us

        await _read(consumer, tp_out, start[tp_out], ends[tp_out], key, records.decode_outbound,
                    out.outbound, stop=past_end)
        # An earlier call of the same id: the node sent nothing of this one before it began.
        out.outbound = [r for r in out.outbound if r.sent_unix_us >= begun_us]
        return out
    finally:
        await consumer.stop()


def _is_start(rec: Any) -> bool:
    return bool(rec.WhichOneof("body") == "started")


async def _partition_counts(kafka: Target, names: list[str]) -> dict[str, int]:
    """Partitions of each topic that exists (a missing one is left out)."""
    admin = AIOKafkaAdminClient(**options_of(kafka))
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described
            if d["error_code"] == 0 and d["partitions"]}


async def _offsets_at(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                      since_us: int) -> dict[TopicPartition, int]:
    found = await consumer.offsets_for_times({tp: max(0, since_us // 1000) for tp in tps})
    ends = await consumer.end_offsets(tps)
    return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}


async def _messages(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int,
                    end: int) -> AsyncIterator[Any]:
    """Messages of ``tp`` from offset ``start`` up to ``end`` (exclusive). The position, not
    the last offset seen, says when: compaction may have removed the last offsets."""
    if start >= end:
        return
    consumer.seek(tp, start)
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=_POLL_MS)
        for msg in batch.get(tp, []):
            if msg.offset >= end:
                return
            yield msg


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int,
                key: bytes, decode: Callable[[bytes], Any], into: list[Any],
                stop: Callable[[Any], bool],
                restart: Callable[[Any], bool] = lambda rec: False) -> None:
    """The records of ``key`` between two offsets, up to the first that ``stop``s; one
    that ``restart``s drops what was read before it."""
    async for msg in _messages(consumer, tp, start, end):
        if msg.key == key and msg.value is not None:
            rec = decode(msg.value)
            if restart(rec):
                into.clear()
            into.append(rec)
            if stop(rec):
                return


async def _started_in_state(consumer: AIOKafkaConsumer, state: str, number: int,
                            key: bytes) -> int | None:
    """The time of the call's started record in the state topic, if it is still live."""
    tp = TopicPartition(state, number)
    consumer.assign([tp])
    start = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    latest: bytes | None = None
    async for msg in _messages(consumer, tp, start, end):
        if msg.key == key:  # compacted: the latest value wins, a tombstone deletes it
            latest = msg.value
    if latest is None:
        return None
    return records.decode_inbound(latest).time_unix_us - int(_STATE_MARGIN_S * 1e6)


# The index is read newest first, in windows this far back (then the rest of the lookback):
# most audits are of recent calls, and a window costs what it holds.
_INDEX_WINDOWS_S = (3600.0, 24 * 3600.0)


async def _started_in_index(consumer: AIOKafkaConsumer, tp: TopicPartition, key: bytes,
                            lookback_s: float) -> int | None:
    """The time of the call's last started record in the ``calls.started`` topic, read
    back from now in widening windows up to ``lookback_s``."""
    now_ms = int(time.time() * 1000)
    consumer.assign([tp])
    upper = (await consumer.end_offsets([tp]))[tp]
    for back_s in (*[w for w in _INDEX_WINDOWS_S if w < lookback_s], lookback_s):
        since_ms = now_ms - int(back_s * 1000)
        found = await consumer.offsets_for_times({tp: max(0, since_ms)})
        lower = found[tp].offset if found.get(tp) else upper
        latest: bytes | None = None
        async for msg in _messages(consumer, tp, lower, upper):
            if msg.key == key and msg.value is not None:
                latest = msg.value
        if latest is not None:
            return records.decode_inbound(latest).time_unix_us - int(_STATE_MARGIN_S * 1e6)
        upper = lower
    return None


async def list_calls(kafka: Target, prefix: str, since_us: int) -> list[CallRow]:
    """Calls with a started or ended record on inbound since ``since_us``, oldest first."""
    inbound = topics.inbound_topic(prefix)
    counts = await _partition_counts(kafka, [inbound])
    if not counts.get(inbound):
        raise LookupError(f"topic {inbound} does not exist")
    tps = [TopicPartition(inbound, p) for p in range(counts[inbound])]
    consumer = AIOKafkaConsumer(**options_of(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        start = await _offsets_at(consumer, tps, since_us)
        ends = await consumer.end_offsets(tps)
        calls: dict[str, list[Any]] = {}
        for tp in tps:
            found: list[Any] = []
            await _read_bodies(consumer, tp, start[tp], ends[tp], found)
            for rec in found:
                calls.setdefault(rec.call_id, []).append(rec)
    finally:
        await consumer.stop()
    rows = [_row(call_id, recs) for call_id, recs in calls.items()]
    return sorted(rows, key=lambda r: (r.started_us or 0, r.call_id))


async def _read_bodies(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int,
                       into: list[Any]) -> None:
    """The started and ended records between two offsets (the rest is dropped at once)."""
    async for msg in _messages(consumer, tp, start, end):
        if msg.value is not None:
            rec = records.decode_inbound(msg.value)
            if rec.WhichOneof("body") in ("started", "ended"):
                into.append(rec)


def _row(call_id: str, recs: list[Any]) -> CallRow:
    started = next((r for r in recs if r.WhichOneof("body") == "started"), None)
    ended = next((r for r in recs if r.WhichOneof("body") == "ended"), None)
    reason = records.end_reason(ended) if ended is not None else None
    return CallRow(
        call_id=call_id, node_id=(started or ended or recs[0]).node_id,
        started_us=started.time_unix_us if started else None,
        duration_ms=ended.ended.duration_ms if ended else None,
        end_reason=(reason.value if reason else "unspecified") if ended else None)
