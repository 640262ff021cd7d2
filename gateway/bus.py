"""The node's Kafka side: one producer, one consumer of this node's commands.

Publishing never blocks and never raises: records go into the bounded
``Outbox`` and one asyncio task moves them into aiokafka. aiokafka's own
``send`` "queues" a record; "acknowledged" comes later through its future.
Both failure points are accounted: a record dropped from the outbox, or
one whose delivery failed, is reported on the bus as RecordsDropped.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from twisted.logger import Logger

from gateway import records
from gateway.clock import wall_offset
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.metrics import Metrics
from gateway.outbox import RECORD_OVERHEAD_BYTES, Entry, Loss, Outbox

log = Logger()

# Records moved from the outbox into aiokafka per wake-up. They stay in the
# outbox's byte accounting (as in flight) until acknowledged or lost.
_TAKE = 2000
# Commands handled per turn of the event loop (about 40 us each), so that a
# burst of commands never holds the reactor for more than a few milliseconds.
_COMMANDS_PER_TURN = 50
# aiokafka's batch size: larger batches, fewer requests and futures.
_BATCH_BYTES = 256 * 1024


async def ensure_topics(bootstrap: str, specs: list[tuple[str, int, int]]) -> None:
    """Create (name, partitions, replication) topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, p, r) for n, p, r in specs if n not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another node won the race
    finally:
        await admin.close()


class _WallClock:
    def seconds(self) -> float:
        return time.time()


class Bus:
    def __init__(
        self,
        config: NodeConfig,
        metrics: Metrics,
        on_command: Callable[[m.Command], None],
        clock: Any = None,
    ) -> None:
        self._c = config
        # The node's clock (monotonic in a running node); None: the wall clock.
        self._clock = clock or _WallClock()
        self._metrics = metrics
        self._on_command = on_command
        self.outbox = Outbox(config.buffer_bytes, config.buffer_call_share_bytes,
                             RECORD_OVERHEAD_BYTES)
        self._wake = asyncio.Event()
        self._node_id = config.node_id
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        # Partition counts are read once at start: a topic that gains partitions
        # later needs a node restart (and remaps calls, as for any keyed producer).
        self._partition_counts: dict[str, int] = {}
        self._partitions: dict[tuple[str, bytes], int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        # False from a failed delivery until the next success: readiness.
        self.delivering = False

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Topics exist, the producer is up and the command consumer is positioned."""
        c = self._c
        await ensure_topics(c.kafka, [
            (c.inbound_topic, c.inbound_partitions, c.replication_factor),
            (c.outbound_topic, c.inbound_partitions, c.replication_factor),
            # One partition: a node's commands stay in the order bots sent them.
            (c.commands_topic, 1, c.replication_factor),
        ])
        self._producer = AIOKafkaProducer(
            bootstrap_servers=c.kafka,
            acks="all",
            enable_idempotence=True,
            linger_ms=c.linger_ms,
            max_batch_size=_BATCH_BYTES,
            client_id=f"kgw-{c.node_id}",
        )
        await self._producer.start()
        for topic in (c.inbound_topic, c.outbound_topic):
            self._partition_counts[topic] = len(await self._producer.partitions_for(topic))
        self._set_delivering(True)
        # No consumer group: this node alone reads its topic, and a restarted
        # node has no calls, so it starts at the end.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=c.kafka, enable_auto_commit=False, client_id=f"kgw-{c.node_id}-cmd",
        )
        await self._consumer.start()
        tp = TopicPartition(c.commands_topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        # Resolve the position now, so a command sent right after the first
        # CallStarted is not skipped by a late "latest".
        await self._consumer.position(tp)
        self._tasks = [
            asyncio.ensure_future(self._drain_loop()),
            asyncio.ensure_future(self._command_loop()),
        ]

    async def stop(self, flush_timeout: float = 10.0) -> None:
        """Stop reading commands, deliver what is buffered (within the timeout), close."""
        if self._consumer is not None:
            self._tasks[1].cancel()
            await self._consumer.stop()
        try:
            await asyncio.wait_for(self._flushed(), flush_timeout)
        except TimeoutError:
            log.error("shutdown: {records} records not delivered within {timeout}s",
                      records=len(self.outbox) + self._in_flight, timeout=flush_timeout)
        for t in self._tasks:
            t.cancel()
        if self._producer is not None:
            await self._producer.stop()

    async def _flushed(self) -> None:
        while len(self.outbox) or self.outbox.has_losses or self._in_flight:
            self._wake.set()
            self._idle.clear()
            await self._idle.wait()

    # --- publishing --------------------------------------------------------------

    def publish(self, rec: m.Inbound) -> None:
        topic = self._c.inbound_topic
        key = rec.call_id.encode()
        value = records.encode_inbound(rec, self._node_id, wall_offset(self._clock))
        self._put(Entry(topic, key, value, rec.call_id, rec.record_seq,
                        isinstance(rec.body, m.CallerAudio), self._partition(topic, key)))
        if isinstance(rec.body, m.CallEnded):
            # The call's last record: forget its cached partitions.
            self._partitions.pop((topic, key), None)
            self._partitions.pop((self._c.outbound_topic, key), None)

    def publish_outbound(self, rec: m.Outbound) -> None:
        topic = self._c.outbound_topic
        key = rec.call_id.encode()
        value = records.encode_outbound(rec, self._node_id, wall_offset(self._clock))
        self._put(Entry(topic, key, value, rec.call_id, is_audio=isinstance(rec.body, m.AudioSent),
                        partition=self._partition(topic, key)))

    def _put(self, entry: Entry) -> None:
        dropped = self.outbox.put(entry)
        if dropped:
            self._metrics.records_dropped.labels("buffer_full").inc(dropped)
        self._wake.set()

    async def _drain_loop(self) -> None:
        outbox = self.outbox
        while True:
            if not len(outbox) and not outbox.has_losses:
                self._metrics.buffer_records.set(0)
                self._metrics.buffer_bytes.set(0)
                if not self._in_flight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # Loss notes go first: what they stand for is older than what waits.
            entries = [self._loss_note(call_id, topic, loss)
                       for (call_id, topic), loss in outbox.take_losses().items()]
            outbox.count_in_flight(entries)
            entries += outbox.take(_TAKE)
            await self._send_batches(entries)
            self._metrics.buffer_records.set(len(outbox))
            self._metrics.buffer_bytes.set(outbox.bytes + outbox.in_flight_bytes)

    def _loss_note(self, call_id: str, topic: str, loss: Loss) -> Entry:
        """The record that takes the lost ones' place, on the topic they were meant for."""
        log.warn("call {call_id}: {records} records to {topic} lost before reaching Kafka",
                 call_id=call_id, records=loss.records, topic=topic)
        now = time.time()  # a wall-clock time already: no offset below
        if topic == self._c.inbound_topic:
            value = records.encode_inbound(m.Inbound(
                call_id, loss.last_record_seq, now,
                m.RecordsDropped(loss.records, loss.first_record_seq, loss.last_record_seq,
                                 loss.audio_chunks, topic)), self._node_id)
        else:
            value = records.encode_outbound(
                m.Outbound(call_id, now, m.OutboundDropped(loss.records, loss.audio_chunks)),
                self._node_id)
        key = call_id.encode()
        # No call id on the entry: a note that fails is not noted again.
        return Entry(topic, key, value, partition=self._partition(topic, key))

    async def _send_batches(self, entries: list[Entry]) -> None:
        """One aiokafka batch per partition instead of one send() per record: the
        per-record future, coroutine and partitioner calls were most of the bus's cost."""
        producer = self._producer
        assert producer is not None
        by_partition: dict[tuple[str, int], list[Entry]] = {}
        for e in entries:
            by_partition.setdefault((e.topic, e.partition), []).append(e)
        queued_at = time.monotonic()
        for (topic, partition), group in by_partition.items():
            i = 0
            while i < len(group):
                batch = producer.create_batch()
                first = i
                while i < len(group) and batch.append(
                        key=group[i].key, value=group[i].value, timestamp=None) is not None:
                    i += 1
                if i == first:  # larger than a whole batch: Kafka would refuse it too
                    self.outbox.settle(group[i:i + 1])
                    self._lost(group[i], None)
                    i += 1
                    continue
                sent = group[first:i]
                try:
                    # Waits only while this partition's previous batch is still
                    # queued (broker slow or away); new records wait in the outbox.
                    fut = await producer.send_batch(batch, topic, partition=partition)
                except KafkaError as e:
                    self.outbox.settle(sent)
                    for entry in sent:
                        self._lost(entry, e)
                    continue
                self._in_flight += len(sent)
                fut.add_done_callback(functools.partial(self._delivered, sent, queued_at))

    def _delivered(self, sent: list[Entry], queued_at: float, fut: asyncio.Future[object]) -> None:
        self._in_flight -= len(sent)
        self.outbox.settle(sent)
        if fut.cancelled() or fut.exception() is not None:
            err = None if fut.cancelled() else fut.exception()
            for entry in sent:
                self._lost(entry, err)
        else:
            self._metrics.records_produced.inc(len(sent))
            self._metrics.produce_latency.observe(time.monotonic() - queued_at)
            if not self.delivering:
                self._set_delivering(True)
        if not self._in_flight:
            self._wake.set()

    def _partition(self, topic: str, key: bytes) -> int:
        """Kafka's default (murmur2) partition for a key, cached: aiokafka computes it in
        pure Python, about 15 us a record."""
        cached = self._partitions.get((topic, key))
        if cached is None:
            n = self._partition_counts[topic]
            cached = self._partitions[(topic, key)] = (murmur2(key) & 0x7FFFFFFF) % n
        return cached

    def _lost(self, entry: Entry, err: BaseException | None) -> None:
        self._metrics.records_dropped.labels("delivery_failed").inc()
        self._set_delivering(False)
        log.error("call {call_id}: record to {topic} not delivered: {err!r}",
                  call_id=entry.call_id, topic=entry.topic, err=err)
        if entry.call_id:  # loss notes themselves carry none: no loop of notes
            self.outbox.record_loss(entry)
            self._wake.set()

    def _set_delivering(self, up: bool) -> None:
        self.delivering = up
        self._metrics.kafka_up.set(int(up))

    # --- commands ------------------------------------------------------------------

    async def _command_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=_COMMANDS_PER_TURN)
            except KafkaError as e:
                log.error("command consumer: {err!r}; retrying", err=e)
                await asyncio.sleep(1)
                continue
            now = time.time()
            for msgs in batches.values():
                for msg in msgs:
                    self._dispatch(msg.value, now)
            # getmany returns records already fetched without yielding to the loop:
            # a bot's burst of thousands of commands would otherwise hold every
            # call's audio for as long as it takes to handle them all.
            await asyncio.sleep(0)

    def _dispatch(self, value: bytes | None, now: float) -> None:
        try:
            cmd = records.decode_command(value or b"", self._c.call.commands)
        except records.BadRecord as e:
            self._metrics.commands.labels("bad_record").inc()
            log.warn("dropping command: {err}", err=e)
            return
        if cmd.sent_at:
            age = now - cmd.sent_at
            self._metrics.command_lag.observe(max(0.0, age))
            limit = self._c.max_command_age_s
            if limit and age > limit and not isinstance(cmd.body, m.Refused):
                # After an outage a bot's backlog arrives at once; playing it now
                # would answer what the caller said long ago.
                self._metrics.commands_stale.inc()
                cmd = replace(cmd, body=m.Refused(
                    f"stale: sent {age:.1f}s ago, more than --max-command-age-s {limit:g}"))
        try:
            self._on_command(cmd)
        except Exception:
            # A bug handling one command must not stop command delivery for every call.
            self._metrics.commands.labels("error").inc()
            log.failure("call {call_id}: command handler failed", call_id=cmd.call_id)
