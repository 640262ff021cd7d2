"""The node's Kafka side: one producer, one consumer of this node's commands.

Publishing never blocks and never raises: records go into the bounded
``Outbox``, one queue per topic partition, and one sender task per partition
moves them into aiokafka, so a partition whose leader is away holds up no
other. aiokafka's ``send_batch`` "queues" a batch; "acknowledged" comes later
through its future.

No duplicates, no reordering, no false losses. The producer is idempotent
(``acks=all``): a batch aiokafka has *sent* is retried by aiokafka itself
with its producer id and sequence numbers until the broker takes it, so a
retry can never write it twice. A batch that is never sent (no leader until
the request timeout) fails with a timeout or not-leader error; those records
were not written, so they go back to the front of their partition's queue
and are sent again, in order. Each partition has one batch in aiokafka at a
time, so a batch that comes back never has a later one overtake it. Only a
record the broker refuses outright is lost; it, and every record the outbox
dropped to stay in its bounds, is reported on the bus as RecordsDropped
(loss notes are retried until delivered).

Late joiners. A bot instance handed an inbound partition mid-call never saw
the calls' ``started`` records, so every inbound record of a call carries the
call's reply topic, sample rate and node id as headers (``gateway.topics``:
learnt from the call's ``started`` as it is published, forgotten after its
``ended``), and the node keeps a compacted call-state topic, keyed and
partitioned like inbound: the ``started`` record again (same bytes, same
headers) when a call starts, a tombstone after its ``ended``. Both state
records are precious and go to the one partition chosen at the start, one
behind the other in that partition's queue, so the tombstone never overtakes
the record it deletes. The node's lease hears that a call's end is delivered
once its ``ended`` and its tombstone both are: a node lost in between has the
call ended ``NODE_LOST`` (and tombstoned) by whoever settles its lease.

Audit. The ``started`` record goes a third time to the ``calls.started`` topic
(kept, not compacted): ``audit`` finds there when an ended call began and reads
its partitions from that time on, not from its whole lookback.

Every long-running task is supervised: an unexpected exception is logged and
the task restarted; a task that keeps failing calls ``on_fatal``, and the
node stops being ready, ends its calls and exits non-zero.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    TopicAlreadyExistsError,
    UnsupportedCodecError,
)
from aiokafka.partitioner import murmur2
from twisted.logger import Logger

from gateway import records, topics
from gateway.clock import wall_offset
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.kafka import zstd
from gateway.kafka.clients import stop_within
from gateway.kafka.outbox import NO_HEADERS, RECORD_OVERHEAD_BYTES, Entry, Headers, Loss, Outbox
from gateway.kafka_access import Target, options_of, probe, target
from gateway.ops.metrics import Metrics

log = Logger()

# Records of no known call (an end with no start, outbound audio) still name their type.
_INBOUND_HEADERS = Headers(topics.type_headers(topics.INBOUND_TYPE))
_OUTBOUND_HEADERS = Headers(topics.type_headers(topics.OUTBOUND_TYPE))

# Records one partition's sender takes from the outbox at a time. They stay in
# the outbox's byte accounting (as in flight) until acknowledged or lost.
_TAKE = 2000
# Commands handled per turn of the event loop (about 40 us each), so that a
# burst of commands never holds the reactor for more than a few milliseconds.
_COMMANDS_PER_TURN = 50
# aiokafka's batch size: larger batches, fewer requests and futures.
_BATCH_BYTES = 256 * 1024
# Errors of a batch aiokafka never sent, safe to send again: no room in the
# accumulator within the request timeout (the previous batch still waiting),
# or the batch expired there with no leader. A batch that *was* sent is retried
# by aiokafka itself (idempotent producer: it never expires), so a request
# timeout of a sent batch does not reach us.
_NOT_SENT = (KafkaTimeoutError, NotLeaderForPartitionError, LeaderNotAvailableError)
# How often partition counts are checked, and metadata refreshed.
_METADATA_S = 5.0
# A partition whose batch waits longer than this makes kgw_kafka_up 0.
_STALLED_S = 10.0
# A supervised task that fails this many times within _FAIL_WINDOW_S is fatal.
_MAX_FAILURES = 5
_FAIL_WINDOW_S = 60.0
_RESTART_DELAY_S = 1.0
# Start-up: retry Kafka with backoff up to this, logging once per interval.
_START_BACKOFF_MAX_S = 10.0
_START_LOG_EVERY_S = 30.0
# The call-state topic is compacted; compaction never touches the segment being
# written, which Kafka rolls weekly by default. Rolled hourly, a late joiner reading
# a partition from the beginning reads its live calls and at most an hour of others.
_STATE_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.ms": str(3600 * 1000)}


def _ms(hours: float) -> str:
    return str(int(hours * 3600 * 1000))


async def ensure_topics(kafka: Target, specs: list[tuple[str, int, int]],
                        configs: dict[str, str] | None = None) -> None:
    """Create (name, partitions, replication) topics that do not exist yet."""
    admin = AIOKafkaAdminClient(**options_of(kafka))
    try:
        # Inside the try: a node retrying an absent broker must not leak a client a try.
        await admin.start()
        existing = set(await admin.list_topics())
        new = [NewTopic(n, p, r, topic_configs=dict(configs or {}))
               for n, p, r in specs if n not in existing]
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


@dataclass(slots=True)
class _LiveCall:
    """What the bus keeps of a call between its started and its ended record."""

    headers: Headers
    # Its call-state records' partition, chosen at the start and kept for the tombstone.
    state_partition: int


class Bus:
    def __init__(
        self,
        config: NodeConfig,
        metrics: Metrics,
        on_command: Callable[[m.Command], None] | None = None,
        clock: Any = None,
        on_fatal: Callable[[str], None] | None = None,
        on_end_delivered: Callable[[str], None] | None = None,
    ) -> None:
        self._c = config
        # The node's clock (monotonic in a running node); None: the wall clock.
        self._clock = clock or _WallClock()
        self._metrics = metrics
        self._on_command = on_command or (lambda cmd: None)
        self._on_fatal = on_fatal or (lambda why: None)
        self._on_end_delivered = on_end_delivered or (lambda call_id: None)
        # Calls whose records wait until the node's lease lists them (see hold).
        self._held: set[str] = set()
        self._state_topic = topics.state_topic(config.topic_prefix)
        self._started_topic = topics.started_topic(config.topic_prefix)
        # Calls whose started was published and ended not yet (as many as the node's
        # registry holds): their headers and call-state partition.
        self._calls: dict[str, _LiveCall] = {}
        # Ended calls: how many of their two ending records (ended, tombstone) are not
        # acknowledged yet. The lease hears of the end when none is.
        self._ends_owed: dict[str, int] = {}
        self.outbox = outbox = Outbox(config.buffer_bytes, config.buffer_call_share_bytes,
                                      RECORD_OVERHEAD_BYTES, config.buffer_max_s)
        # Read when /metrics is scraped, not set on every wake of the drain loop.
        metrics.buffer_records.set_function(lambda: len(outbox))
        metrics.buffer_bytes.set_function(lambda: outbox.bytes + outbox.in_flight_bytes)
        self._wake = asyncio.Event()
        self._node_id = config.node_id
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._senders: dict[tuple[str, int], asyncio.Task[None]] = {}
        # When each partition's batch in aiokafka was handed over (for kgw_kafka_up).
        self._waiting: dict[tuple[str, int], float] = {}
        self._in_flight = 0
        self._failures: dict[str, list[float]] = {}
        self._partition_counts: dict[str, int] = {}
        self._partitions: dict[tuple[str, bytes], int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        # Readiness: False once the bus has failed for good.
        self.healthy = True
        self.delivering = False

    def attach(self, *, on_command: Callable[[m.Command], None],
               on_fatal: Callable[[str], None],
               on_end_delivered: Callable[[str], None]) -> None:
        """Where commands, a fatal failure and delivered call ends are reported (the node)."""
        self._on_command, self._on_fatal = on_command, on_fatal
        self._on_end_delivered = on_end_delivered

    def idle(self) -> bool:
        """Nothing queued, in flight or lost-but-unreported: every record is on the broker."""
        o = self.outbox
        return not len(o) and not o.in_flight_bytes and not o.has_losses

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Topics exist, the producer is up and the command consumer is positioned.

        Kafka away at start is not an error: retried with backoff (logged once per
        interval) until it answers; cancel the call to give up. A broker that refuses
        the TLS handshake or the credentials is one: ``AccessError``, at once.
        """
        delay, last_log = 0.5, -_START_LOG_EVERY_S
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._connect()
                if attempts > 1:
                    log.info("Kafka reachable after {n} attempts", n=attempts)
                break
            except (KafkaError, OSError) as e:
                await self._close_clients()
                if isinstance(e, KafkaConnectionError):  # away, or refusing who we are?
                    await probe(target(self._c.kafka, self._c.kafka_access))  # AccessError
                now = time.monotonic()
                if now - last_log >= _START_LOG_EVERY_S:
                    last_log = now
                    log.warn("Kafka at {kafka} not reachable ({err}); retrying, not ready",
                             kafka=self._c.kafka, err=type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _START_BACKOFF_MAX_S)
        self._set_delivering(True)
        self._tasks = [
            self._supervise("drain", self._drain_loop),
            self._supervise("commands", self._command_loop),
            self._supervise("metadata", self._metadata_loop),
        ]

    async def _connect(self) -> None:
        c = self._c
        configs = {"min.insync.replicas": str(c.min_insync_replicas)} \
            if c.min_insync_replicas > 1 else {}
        kafka = target(c.kafka, c.kafka_access)
        audio = {**configs, "retention.ms": _ms(c.audio_retention_h)}
        await ensure_topics(kafka, [
            (c.inbound_topic, c.inbound_partitions, c.replication_factor),
            (c.outbound_topic, c.inbound_partitions, c.replication_factor),
        ], audio)
        # One partition: a node's commands stay in the order bots sent them.
        await ensure_topics(kafka, [(c.commands_topic, 1, c.replication_factor)],
                            {**configs, "retention.ms": _ms(c.commands_retention_h)})
        if c.compression == "zstd":
            zstd.install()
        self._producer = AIOKafkaProducer(
            **kafka,
            acks="all",
            enable_idempotence=True,
            compression_type=None if c.compression == "none" else c.compression,
            linger_ms=0,  # the node lingers itself (_send_partition)
            max_batch_size=_BATCH_BYTES,
            # Fresh metadata: a new leader, or a topic whose partitions changed,
            # is seen within seconds, not aiokafka's default five minutes.
            metadata_max_age_ms=int(_METADATA_S * 1000),
            client_id=f"kgw-{c.node_id}",
        )
        await self._producer.start()
        for topic in (c.inbound_topic, c.outbound_topic):
            await self._count_partitions(topic)
        # As many partitions as inbound has (which another node may have made), so a
        # call's state records have the partition number of its inbound records.
        inbound = self._partition_counts[c.inbound_topic]
        await ensure_topics(kafka, [(self._state_topic, inbound, c.replication_factor)],
                            {**configs, **_STATE_TOPIC_CONFIGS})
        await self._count_partitions(self._state_topic)
        await ensure_topics(kafka, [(self._started_topic, inbound, c.replication_factor)],
                            audio)
        await self._count_partitions(self._started_topic)
        if self._partition_counts[self._state_topic] != inbound:
            log.error("topic {state} has {n} partitions, {inbound} has {m}: bots that join "
                      "late will not find the calls of their inbound partitions in it",
                      state=self._state_topic, n=self._partition_counts[self._state_topic],
                      inbound=c.inbound_topic, m=inbound)
        # No consumer group: this node alone reads its topic, and a restarted
        # node has no calls, so it starts at the end.
        self._consumer = AIOKafkaConsumer(
            **kafka, enable_auto_commit=False, client_id=f"kgw-{c.node_id}-cmd",
        )
        await self._consumer.start()
        tp = TopicPartition(c.commands_topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        # Resolve the position now, so a command sent right after the first
        # CallStarted is not skipped by a late "latest".
        await self._consumer.position(tp)

    async def _count_partitions(self, topic: str) -> None:
        assert self._producer is not None
        self._partition_counts[topic] = len(await self._producer.partitions_for(topic))
        self._metrics.topic_partitions.labels(topic).set(self._partition_counts[topic])

    async def stop(self, flush_timeout: float = 10.0) -> None:
        """Stop reading commands, deliver what is buffered (within the timeout), close.

        Returns within flush_timeout + 2 x CLOSE_TIMEOUT_S, Kafka or not.
        """
        self._stopping = True
        for t in self._tasks[1:]:
            t.cancel()
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._flushed(), flush_timeout)
            except TimeoutError:
                pass
        undelivered = len(self.outbox) + self._in_flight
        if undelivered or self.outbox.has_losses:
            log.error("shutdown: {records} records not delivered within {timeout}s",
                      records=undelivered, timeout=flush_timeout)
        for t in [*self._tasks, *self._senders.values()]:
            t.cancel()
        await self._close_clients()

    async def _close_clients(self) -> None:
        await stop_within((self._consumer, self._producer), "bus")
        self._consumer = self._producer = None

    async def _flushed(self) -> None:
        while len(self.outbox) or self.outbox.has_losses or self._in_flight:
            self._wake.set()
            self._idle.clear()
            await self._idle.wait()

    @property
    def undelivered(self) -> int:
        return len(self.outbox) + self._in_flight

    # --- supervision -------------------------------------------------------------

    def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def supervised() -> None:
            while True:
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.failure("bus task {task} failed; restarting it", task=name)
                    if self._failed(name):
                        return
                    await asyncio.sleep(_RESTART_DELAY_S)

        return asyncio.ensure_future(supervised())

    def _failed(self, name: str) -> bool:
        """Count a failure of task ``name``; True (and fatal) if it keeps failing."""
        self._metrics.bus_task_failures.labels(name).inc()
        now = time.monotonic()
        recent = [t for t in self._failures.get(name, []) if now - t < _FAIL_WINDOW_S]
        recent.append(now)
        self._failures[name] = recent
        if len(recent) < _MAX_FAILURES or self._stopping:
            return False
        self.healthy = False
        self._set_delivering(False)
        self._on_fatal(f"bus task {name} failed {len(recent)} times in {_FAIL_WINDOW_S:g}s")
        return True

    # --- publishing --------------------------------------------------------------

    def hold(self, call_id: str) -> None:
        """Send nothing of this call until ``release``: its started record must not reach
        Kafka before the node's lease lists the call, or a crash in between would leave
        a started call that no one ends."""
        self._held.add(call_id)

    def release(self, call_ids: Iterable[str]) -> None:
        """The lease that lists these calls is on the broker: their records may go."""
        before = len(self._held)
        self._held.difference_update(call_ids)
        if len(self._held) != before:
            self._wake.set()

    @property
    def live_calls(self) -> int:
        """Calls whose started record was published and ended not yet (headers kept)."""
        return len(self._calls)

    def publish(self, rec: m.Inbound) -> None:
        topic = self._c.inbound_topic
        call_id = rec.call_id
        key = call_id.encode()
        value = records.encode_inbound(rec, self._node_id, wall_offset(self._clock))
        body = rec.body
        started, ended = isinstance(body, m.CallStarted), isinstance(body, m.CallEnded)
        live: _LiveCall | None
        if isinstance(body, m.CallStarted):
            live = self._calls[call_id] = _LiveCall(
                Headers(topics.call_headers(self._c.commands_topic, body.start.sample_rate,
                                            self._node_id)),
                self._partition(self._state_topic, key))
        else:
            live = self._calls.pop(call_id, None) if ended else self._calls.get(call_id)
        headers = _INBOUND_HEADERS if live is None else live.headers
        self._put(Entry(topic, key, value, call_id, rec.record_seq,
                        isinstance(body, m.CallerAudio), self._partition(topic, key),
                        precious=started or ended, ends_call=ended, headers=headers))
        if started:
            self._put_state(call_id, key, value, live)
            # The audit's index of when calls began: one small record per call, kept.
            self._put(Entry(self._started_topic, key, value, call_id,
                            partition=self._partition(self._started_topic, key), precious=True,
                            headers=headers))
        elif ended:
            self._ends_owed[call_id] = self._ends_owed.get(call_id, 0) + 2
            self._put_state(call_id, key, None, live)
            # The call's last record: forget its cached partitions.
            for t in (topic, self._c.outbound_topic, self._state_topic, self._started_topic):
                self._partitions.pop((t, key), None)

    def _put_state(self, call_id: str, key: bytes, value: bytes | None,
                   live: _LiveCall | None) -> None:
        """The call's record on the call-state topic: its started record, or (``None``) the
        tombstone that deletes it, behind it in the same partition's queue."""
        if live is None:  # an end with no start published: a tombstone all the same
            partition, headers = self._partition(self._state_topic, key), NO_HEADERS
        else:
            partition = live.state_partition
            headers = NO_HEADERS if value is None else live.headers
        self._put(Entry(self._state_topic, key, value, call_id, partition=partition,
                        precious=True, ends_call=value is None, headers=headers))

    def publish_outbound(self, rec: m.Outbound) -> None:
        topic = self._c.outbound_topic
        key = rec.call_id.encode()
        value = records.encode_outbound(rec, self._node_id, wall_offset(self._clock))
        self._put(Entry(topic, key, value, rec.call_id, is_audio=isinstance(rec.body, m.AudioSent),
                        partition=self._partition(topic, key), headers=_OUTBOUND_HEADERS))

    def _put(self, entry: Entry) -> None:
        dropped = self.outbox.put(entry, time.monotonic())
        if dropped:
            self._metrics.records_dropped.labels("buffer_full").inc(dropped)
        self._wake.set()

    async def _drain_loop(self) -> None:
        """Loss notes into their partitions' queues; a sender for each partition with work."""
        outbox = self.outbox
        while True:
            for (call_id, topic), loss in outbox.take_losses().items():
                outbox.put_note(self._loss_note(call_id, topic, loss))
            for tp in outbox.partitions():
                sender = self._senders.get(tp)
                if sender is None or sender.done():
                    self._senders[tp] = asyncio.ensure_future(self._send_partition(tp))
            if not len(outbox) and not self._in_flight and not outbox.has_losses:
                self._idle.set()
            self._wake.clear()
            await self._wake.wait()

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
        return Entry(topic, key, value, call_id, partition=self._partition(topic, key),
                     loss=loss, headers=loss.headers)

    async def _send_partition(self, tp: tuple[str, int]) -> None:
        """Send one partition's queue, one batch in aiokafka at a time, until it is empty."""
        topic, partition = tp
        while True:
            # The linger is spent here, before the batch is built, so that what arrives
            # meanwhile rides in it (aiokafka's own linger, off, would hold a batch already
            # closed to newcomers). It ends on a tick all partitions share, so their batches
            # reach aiokafka in one loop turn and leave in one produce request, or sooner
            # if the oldest record would otherwise wait longer than the linger.
            linger = self._c.linger_ms / 1000
            if linger:
                now = time.monotonic()
                wait = min(linger - now % linger, linger - self.outbox.head_age(tp, now))
                if wait > 0:
                    await asyncio.sleep(wait)
            producer = self._producer
            entries = self.outbox.take_partition(tp, _TAKE, self._held)
            if not entries or producer is None:
                self.outbox.put_back(entries)
                # Nothing to send now. Empty: the drain loop may be idle now. A held
                # call at the head: the release wakes the drain loop, which starts a
                # new sender (waking it here would only spin).
                self._waiting.pop(tp, None)
                if tp not in self.outbox.partitions():
                    self._wake.set()
                return
            self._in_flight += len(entries)
            try:
                sent_back = await self._send_entries(producer, topic, partition, entries)
            except Exception:
                # A bug or an aiokafka surprise (an AssertionError when a topic lost
                # partitions): what was not sent went back; the metadata task maps
                # partitions again and the drain loop starts a new sender.
                self._set_delivering(False)
                log.failure("sender for {topic}[{p}] failed", topic=topic, p=partition)
                self._failed("send")
                await asyncio.sleep(1)
                break
            if sent_back:
                await asyncio.sleep(0.5)  # the leader is away: aiokafka waited already
        self._waiting.pop(tp, None)
        self._wake.set()

    async def _send_entries(self, producer: AIOKafkaProducer, topic: str, partition: int,
                            entries: list[Entry]) -> bool:
        """Send ``entries`` in batches, awaiting each; returns True if some came back unsent."""
        i = 0
        while i < len(entries):
            batch = producer.create_batch()
            first = i
            while i < len(entries) and batch.append(
                    key=entries[i].key, value=entries[i].value, timestamp=None,
                    headers=entries[i].headers.pairs) is not None:
                i += 1
            if i == first:  # larger than a whole batch: Kafka would refuse it too
                self._settle_lost(entries[i:i + 1], None)
                i += 1
                continue
            sent = entries[first:i]
            queued_at = time.monotonic()
            self._waiting[(topic, partition)] = queued_at
            try:
                fut = await producer.send_batch(batch, topic, partition=partition)
                await fut
            except _NOT_SENT as e:
                # Never written: back to the front, in order, with what followed.
                self._put_back(entries[first:])
                log.warn("records to {topic}[{p}] not sent ({err}); retrying", topic=topic,
                         p=partition, err=type(e).__name__)
                return True
            except KafkaError as e:
                self._settle_lost(sent, e)
                continue
            except Exception:
                self._put_back(entries[first:])
                raise
            self._waiting.pop((topic, partition), None)
            self._in_flight -= len(sent)
            self.outbox.settle(sent)
            for e in sent:
                if e.ends_call:
                    self._end_delivered(e.call_id)
            self._metrics.records_produced.inc(len(sent))
            self._metrics.produce_latency.observe(time.monotonic() - queued_at)
            if not self.delivering:
                self._set_delivering(True)
        return False

    def _end_delivered(self, call_id: str) -> None:
        """One of the call's ending records is on the broker; the lease hears once both are."""
        owed = self._ends_owed.get(call_id)
        if owed is None:
            return  # the other was lost: the lease waits for the bus to be idle
        if owed > 1:
            self._ends_owed[call_id] = owed - 1
        else:
            del self._ends_owed[call_id]
            self._on_end_delivered(call_id)

    def _put_back(self, entries: list[Entry]) -> None:
        self._in_flight -= len(entries)
        self.outbox.put_back(entries)
        self._set_delivering(False)

    def _settle_lost(self, entries: list[Entry], err: BaseException | None) -> None:
        self._in_flight -= len(entries)
        self.outbox.settle(entries)
        for entry in entries:
            self._lost(entry, err)

    def _partition(self, topic: str, key: bytes) -> int:
        """Kafka's default (murmur2) partition for a key, cached: aiokafka computes it in
        pure Python, about 15 us a record."""
        cached = self._partitions.get((topic, key))
        if cached is None:
            n = self._partition_counts[topic]
            cached = self._partitions[(topic, key)] = (murmur2(key) & 0x7FFFFFFF) % n
        return cached

    def _lost(self, entry: Entry, err: BaseException | None) -> None:
        self._set_delivering(False)
        if entry.loss is not None:
            # A loss note that failed: the loss it reports is owed again.
            self.outbox.restore_loss(entry)
            self._wake.set()
            return
        self._metrics.records_dropped.labels("delivery_failed").inc()
        log.error("call {call_id}: record to {topic} not delivered: {err!r}",
                  call_id=entry.call_id, topic=entry.topic, err=err)
        if entry.ends_call:
            self._ends_owed.pop(entry.call_id, None)
        if entry.topic in (self._state_topic, self._started_topic):
            # No loss note there: under the call's key it would take the place of the
            # started record. The log line above is all a refused state record leaves
            # (audit then reads from its lookback instead).
            return
        if entry.call_id:
            self.outbox.record_loss(entry)
            self._wake.set()

    def _set_delivering(self, up: bool) -> None:
        self.delivering = up
        self._metrics.kafka_up.set(int(up))

    # --- metadata ------------------------------------------------------------------

    async def _metadata_loop(self) -> None:
        """Partition counts that change are handled; a partition stuck makes kafka_up 0."""
        while True:
            await asyncio.sleep(_METADATA_S)
            producer = self._producer
            if producer is None:
                continue
            now = time.monotonic()
            if any(now - t > _STALLED_S for t in self._waiting.values()):
                self._set_delivering(False)
            for topic, known in list(self._partition_counts.items()):
                try:
                    count = len(await asyncio.wait_for(producer.partitions_for(topic),
                                                       _METADATA_S))
                except (TimeoutError, KafkaError):
                    continue
                if count and count != known:
                    self._repartition(topic, known, count)

    def _repartition(self, topic: str, known: int, count: int) -> None:
        log.error("topic {topic} has {count} partitions, not {known}: records of its calls "
                  "now go to other partitions (bots may see a call move)", topic=topic,
                  count=count, known=known)
        self._metrics.topic_partitions.labels(topic).set(count)
        self._metrics.partition_changes.labels(topic).inc()
        self._partition_counts[topic] = count
        for cached in [k for k in self._partitions if k[0] == topic]:
            del self._partitions[cached]
        moved = self.outbox.repartition(topic, count, lambda key: self._partition(topic, key))
        if topic == self._state_topic:
            # Live calls whose partition is gone tombstone where their record moved to.
            for call_id, live in self._calls.items():
                if live.state_partition >= count:
                    live.state_partition = self._partition(topic, call_id.encode())
        if moved:
            log.warn("{n} queued records of {topic} moved to existing partitions", n=moved,
                     topic=topic)
        self._wake.set()

    # --- commands ------------------------------------------------------------------

    async def _command_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=_COMMANDS_PER_TURN)
            except (UnsupportedCodecError, CorruptRecordException) as e:
                # A batch no retry can read (a codec this node lacks, a bad CRC) would
                # stop commands for every call: step over it, one offset at a time.
                await self._skip_unreadable(consumer, e)
                continue
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

    async def _skip_unreadable(self, consumer: AIOKafkaConsumer, err: KafkaError) -> None:
        tp = TopicPartition(self._c.commands_topic, 0)
        offset = await consumer.position(tp)
        consumer.seek(tp, offset + 1)
        self._metrics.commands.labels("unreadable").inc()
        log.error("command at offset {offset} of {topic} cannot be read ({err!r}); skipped: "
                  "its call, unknown, gets no command_rejected", offset=offset,
                  topic=self._c.commands_topic, err=err)

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
