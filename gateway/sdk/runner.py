"""The SDK's Kafka side: a consumer-group member on the inbound topic, one producer for
commands, offsets committed once records are handed to the bot.

- Partitions assigned: the call-state topic's partitions of the same numbers are
  read to their end first, so calls found mid-way are joined with their start fields.
- Partitions revoked: what was handed over is committed, and the calls there end
  here as ``handed_over`` (their new owner carries on).
- Every ``commit_interval_s``, and on stop, the handed-over offsets are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalStateError, KafkaError

from gateway import records, topics
from gateway.core import model as m
from gateway.kafka_access import probe, target
from gateway.sdk.calls import Calls, Handler, Stats
from gateway.sdk.offsets import PartitionOffsets
from gateway.sdk.settings import BotSettings

log = logging.getLogger(__name__)

_COMMAND_HEADERS = topics.type_headers(topics.COMMAND_TYPE)

POLL_MS = 100
STATE_READ_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0
IDLE_CHECK_S = 5.0
# On a rebalance or a stop, how long handlers may take to read what is already queued
# for them: what they read is committed, the rest the next owner reads again.
HANDOVER_GRACE_S = 0.5


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: _Runner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._runner.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._runner.assigned(set(assigned))


class _Runner:
    def __init__(self, handler: Handler, settings: BotSettings) -> None:
        self.settings = settings
        self.calls = Calls(handler, self.send, settings.limits)
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.assignment_changed = asyncio.Event()
        self.send_failures = 0
        self.kafka = kafka = target(settings.kafka, settings.kafka_access)
        self.consumer = AIOKafkaConsumer(
            **kafka, group_id=settings.group_id,
            client_id=f"{settings.group_id}-sdk",
            auto_offset_reset="earliest" if settings.from_beginning else "latest",
            enable_auto_commit=False,
            # A bot started before any node created the topic would otherwise wait
            # for the default 5-minute metadata refresh.
            metadata_max_age_ms=10_000,
        )
        self.producer = AIOKafkaProducer(
            **kafka, client_id=f"{settings.group_id}-sdk", acks="all",
            enable_idempotence=True, linger_ms=2,
            # A node's commands topic has one partition and aiokafka keeps one batch per
            # partition in flight: small batches would queue commands behind each other.
            max_batch_size=512 * 1024,
        )
        # Reads the call-state topic on each assignment. One for the bot's life: a
        # consumer stopped inside a rebalance callback cancels the group coordinator.
        self.state_reader = AIOKafkaConsumer(**kafka, group_id=None, enable_auto_commit=False)
        self.admin = AIOKafkaAdminClient(**kafka)

    # --- commands -------------------------------------------------------------

    async def send(self, cmd: m.Command) -> None:
        call = self.calls.get(cmd.call_id)
        if call is None:
            return
        value = records.encode_command(replace(cmd, sent_at=time.time()))
        try:
            # Enqueues in the producer's batch (waits only if its buffer is full);
            # one call's commands keep their order (one producer, one partition).
            fut = await self.producer.send(call.info.reply_topic, value,
                                           key=cmd.call_id.encode(), headers=_COMMAND_HEADERS)
        except KafkaError as e:
            self._send_failed(cmd, e)
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() is None
                              or self._send_failed(cmd, f.exception()))

    def _send_failed(self, cmd: m.Command, error: BaseException | None) -> None:
        self.send_failures += 1
        log.warning("event=command_send_failed call_id=%s command_id=%s error=%r", cmd.call_id,
                    cmd.command_id, error, extra={"call_id": cmd.call_id})

    # --- partitions -----------------------------------------------------------------

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked}
        await self.calls.drain(partitions, HANDOVER_GRACE_S)
        tasks = self.calls.on_revoked(partitions)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.commit(revoked)
        for tp in revoked:
            self.offsets.pop(tp, None)
            self._committed.pop(tp, None)
        log.info("event=partitions_revoked partitions=%s", _fmt(revoked))

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.offsets.setdefault(tp, PartitionOffsets())
        await self._learn_live_calls({tp.partition for tp in assigned})
        log.info("event=partitions_assigned partitions=%s", _fmt(assigned))
        self.assignment_changed.set()

    async def _learn_live_calls(self, partitions: set[int]) -> None:
        """Read the call-state topic's same partitions to their end: the live calls there."""
        if not partitions:
            return
        topic = self.settings.state_topic
        reader = self.state_reader
        try:
            known = await self._partitions(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions) if p in known]
            if not tps:
                return
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            live: dict[int, dict[str, object]] = {tp.partition: {} for tp in tps}
            async with asyncio.timeout(STATE_READ_TIMEOUT_S):
                while [tp for tp in tps if await reader.position(tp) < ends[tp]]:
                    for tp, msgs in (await reader.getmany(*tps, timeout_ms=POLL_MS)).items():
                        for msg in msgs:
                            key = msg.key.decode() if msg.key else ""
                            if msg.value is None:
                                live[tp.partition].pop(key, None)
                            else:
                                live[tp.partition][key] = msg.value
            for p, values in live.items():
                starts = {}
                for key, value in values.items():
                    try:
                        starts[key] = records.decode_inbound(value)  # type: ignore[arg-type]
                    except records.BadRecord:
                        continue
                self.calls.learn_starts(p, starts)
        except Exception as e:
            # Never out of a rebalance callback (it would stop the group membership);
            # late joiners still have the record headers (reply topic, rate, node).
            log.warning("event=call_state_unread topic=%s error=%r", topic, e)
        finally:
            reader.unsubscribe()  # drops the assignment; the client stays up for the next one

    async def _partitions(self, topic: str) -> set[int]:
        """The topic's partitions; none if it does not exist (a node of an older version)."""
        (desc,) = await self.admin.describe_topics([topic])
        if desc["error_code"] != 0:
            return set()
        return {p["partition"] for p in desc["partitions"]}

    # --- offsets -------------------------------------------------------------------

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        due = {}
        for tp, offsets in self.offsets.items():
            point = offsets.commit_point
            if (only is None or tp in only) and point is not None \
                    and self._committed.get(tp) != point:
                due[tp] = point
        if not due:
            return
        try:
            await self.consumer.commit(due)
        except (KafkaError, IllegalStateError) as e:
            log.warning("event=commit_failed partitions=%s error=%r", _fmt(due), e)
            return
        self._committed.update(due)

    # --- the loop ----------------------------------------------------------------------

    async def run(self, ready: asyncio.Event | None, stop: asyncio.Event) -> Stats:
        s = self.settings
        log.info("event=bot_starting kafka=%s topic=%s group_id=%s", s.kafka, s.inbound_topic,
                 s.group_id)
        self.consumer.subscribe([s.inbound_topic], listener=_Rebalance(self))
        try:
            await self.producer.start()
            await self.state_reader.start()
            await self.admin.start()
            await self.consumer.start()
        except BaseException as e:
            await self._stop_clients()
            if isinstance(e, KafkaError):
                await probe(self.kafka)  # a refused password or certificate: AccessError
            raise
        helpers = [asyncio.create_task(self._signal_ready(ready)),
                   asyncio.create_task(self._every(s.commit_interval_s, self.commit)),
                   asyncio.create_task(self._every(IDLE_CHECK_S, self._forget_idle))]
        try:
            await self._consume(stop)
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.calls.close(HANDOVER_GRACE_S)
            await self.commit()
            await self._stop_clients()
            log.info("event=bot_stopped stats=%s send_failures=%d", self.calls.stats,
                     self.send_failures)
        return self.calls.stats

    async def _consume(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=POLL_MS)
            for tp, msgs in batches.items():
                offsets = self.offsets.get(tp)
                if offsets is None:
                    continue  # revoked meanwhile; its new owner reads these
                for msg in msgs:
                    token = offsets.received(msg.offset)
                    try:
                        if msg.value is None:
                            raise records.BadRecord("inbound record without a value")
                        rec = records.decode_inbound(msg.value)
                        if not rec.call_id:
                            raise records.BadRecord("inbound record without call_id")
                    except records.BadRecord as e:
                        token.done()
                        log.warning("event=bad_record partition=%d offset=%d error=%s",
                                    tp.partition, msg.offset, e)
                        continue
                    headers = {k: bytes(v) for k, v in (msg.headers or ())}
                    try:
                        self.calls.on_record(tp.partition, rec, headers, token)
                    except Exception:
                        # A bug must not take the bot down with every call it holds.
                        token.done()
                        log.exception("event=record_failed call_id=%s partition=%d offset=%d",
                                      rec.call_id, tp.partition, msg.offset,
                                      extra={"call_id": rec.call_id})

    async def _every(self, period: float, job: object) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                result = job()  # type: ignore[operator]
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("event=periodic_job_failed")

    def _forget_idle(self) -> None:
        self.calls.forget_idle()

    async def _signal_ready(self, ready: asyncio.Event | None) -> None:
        """Set ``ready`` once partitions are assigned and their positions known (with
        ``latest``, a record produced before the position lookup would be skipped)."""
        while True:
            await self.assignment_changed.wait()
            self.assignment_changed.clear()
            assigned = self.consumer.assignment()
            if not assigned:
                continue
            try:
                for tp in assigned:
                    await self.consumer.position(tp)
            except IllegalStateError:
                continue
            log.info("event=bot_ready partitions=%s", _fmt(assigned))
            if ready is not None:
                ready.set()
            return

    async def _stop_clients(self) -> None:
        for consumer in (self.consumer, self.state_reader):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), SHUTDOWN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.admin.close(), SHUTDOWN_TIMEOUT_S)
        try:
            await asyncio.wait_for(self.producer.flush(), SHUTDOWN_TIMEOUT_S)
        except (TimeoutError, KafkaError) as e:
            log.warning("event=producer_flush_failed error=%r", e)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), SHUTDOWN_TIMEOUT_S)


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


async def run_bot(handler: Handler, settings: BotSettings, *,
                  ready: asyncio.Event | None = None,
                  stop: asyncio.Event | None = None) -> Stats:
    """Run ``handler`` once per call (each in its own task) until ``stop`` is set.

    ``ready`` is set once this instance holds partitions. Raises
    ``aiokafka.errors.KafkaError`` if the broker cannot be reached at start, and
    ``gateway.kafka_access.AccessError`` if it refuses the credentials or TLS.
    """
    runner = _Runner(handler, settings)
    return await runner.run(ready, stop if stop is not None else asyncio.Event())
