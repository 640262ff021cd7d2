"""Reading one call's inbound records back from the bus, from its partition only.

A call's records are keyed by its id, so they all sit in the partition Kafka's
default partitioner picks for the key (``murmur2(key) & 0x7fffffff`` modulo
the partition count, as the node's producer does). The read starts at the
first offset written at or after ``since`` (``offsets_for_times``) and stops
at the call's ``ended``: a lookback bounds the work on a busy topic. Public
aiokafka APIs only, no consumer group.

Small on purpose: ``gateway/audit/reading.py`` does the same job and the two
are to be merged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from gateway import records, topics

__all__ = ["CallNotFound", "RecordedCall", "partition_for", "read_call"]


class CallNotFound(Exception):
    """The call's records are not on the bus in the window read (or it has not ended)."""


@dataclass(frozen=True)
class RecordedCall:
    call_id: str
    started: Any  # the InboundRecord with the call's (last) ``started``
    # (received_unix_us, pcm) of each caller audio record, in order.
    audio: tuple[tuple[int, bytes], ...]
    ended: Any | None  # the InboundRecord with its ``ended``; None if not read yet
    # Records lost before reaching Kafka, as the call's ``dropped`` notes count them.
    records_dropped: int = 0

    @property
    def sample_rate(self) -> int:
        return int(self.started.started.sample_rate)

    @property
    def turn_latency_ms(self) -> tuple[int, ...]:
        return tuple(self.ended.ended.turn_latency_ms) if self.ended is not None else ()

    @property
    def turns(self) -> int:
        return int(self.ended.ended.turns) if self.ended is not None else 0


def partition_for(call_id: str, partitions: int) -> int:
    return int(murmur2(call_id.encode()) & 0x7FFFFFFF) % partitions


async def read_call(bootstrap: str, prefix: str, call_id: str, *, since_unix_s: float,
                    wait_s: float = 0.0) -> RecordedCall:
    """The call's records from its last ``started`` to its ``ended``.

    ``wait_s`` 0: read up to the partition's end as it is now. Above 0: keep waiting
    that long for the ``ended`` (a call that is still going, or just placed).
    Raises ``CallNotFound``.
    """
    topic = topics.inbound_topic(prefix)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition_for(call_id, await _partitions(bootstrap, topic)))
        consumer.assign([tp])
        found = await consumer.offsets_for_times({tp: int(since_unix_s * 1000)})
        end = (await consumer.end_offsets([tp]))[tp]
        start = found[tp]
        consumer.seek(tp, start.offset if start is not None else end)
        return await _collect(consumer, tp, call_id, end, wait_s)
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if desc["error_code"] != 0 or not desc["partitions"]:
        raise CallNotFound(f"topic {topic} does not exist")
    return len(desc["partitions"])


async def _collect(consumer: AIOKafkaConsumer, tp: TopicPartition, call_id: str, end: int,
                   wait_s: float) -> RecordedCall:
    key = call_id.encode()
    deadline = time.monotonic() + wait_s
    started: Any = None
    audio: list[tuple[int, bytes]] = []
    dropped = 0
    while True:
        if not wait_s and await consumer.position(tp) >= end:
            break
        if wait_s and time.monotonic() > deadline:
            break
        batch = await consumer.getmany(tp, timeout_ms=200)
        for msg in batch.get(tp, ()):
            if msg.key != key or msg.value is None:
                continue
            rec = records.decode_inbound(msg.value)
            body = rec.WhichOneof("body")
            if body == "started":
                started, audio, dropped = rec, [], 0  # a call id used again: the last call
            elif started is None:
                continue  # the tail of an earlier call of the same id
            elif body == "audio":
                audio.append((rec.audio.received_unix_us, rec.audio.pcm))
            elif body == "dropped":
                dropped += rec.dropped.records
            elif body == "ended":
                return RecordedCall(call_id, started, tuple(audio), rec, dropped)
        await asyncio.sleep(0)
    if started is None:
        raise CallNotFound(f"no started record of call {call_id} on {tp.topic} "
                           f"partition {tp.partition} in the window read")
    raise CallNotFound(f"call {call_id} has no ended record yet on {tp.topic} "
                       f"partition {tp.partition}")
