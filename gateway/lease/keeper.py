"""The Kafka side of node leases: heartbeats, claims and NODE_LOST ends (and the
tombstones that take those calls out of the call-state topic).

The rules (who is expired, who wins, what to write) are in ``gateway.lease.rules``,
whose docstring explains the mechanism and its bounds; this module only moves
records. It has its own producer (idempotent, ``acks=all``, no linger), so a
lease never waits behind a backlog of call audio on the bus's producer, and a
consumer of the nodes topic with no group, assigned partition 0, read from the
beginning (the topic is compacted: one lease per node, plus one claim and one
settlement per lost epoch).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from twisted.logger import Logger

from gateway import records, topics
from gateway.config import NodeConfig
from gateway.kafka.clients import CLOSE_TIMEOUT_S, stop_within
from gateway.kafka_access import target
from gateway.lease import rules as ls

log = Logger()

_NODE_HEADERS = topics.type_headers(topics.NODE_RECORD_TYPE)
# A NODE_LOST end names its type; the call's own headers died with its node.
_INBOUND_HEADERS = topics.type_headers(topics.INBOUND_TYPE)

# How often ended calls are checked for delivery while some are listed.
_ENDING_POLL_S = 0.2
# Exit status of a node fenced by a peer's claim (EX_TEMPFAIL).
FENCED_EXIT = 75


def timing_of(config: NodeConfig) -> ls.Timing:
    return ls.Timing(config.lease_s, config.lease_margin_s)


def _exit_fenced(claim: ls.Claim) -> None:
    log.critical("fenced: node {claimer} epoch {ce} claimed this node's calls while it was "
                 "cut off; exiting without writing anything more", claimer=claim.claimer_id,
                 ce=claim.claimer_epoch)
    os._exit(FENCED_EXIT)


def _wall_us() -> int:
    return round(time.time() * 1_000_000)


class LeaseKeeper:
    def __init__(self, config: NodeConfig, *, delivered: Callable[[], bool] = lambda: True,
                 on_fenced: Callable[[ls.Claim], None] = _exit_fenced,
                 on_listed: Callable[[list[str]], None] = lambda call_ids: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._c = config
        # Told the ids of the live calls each lease on the broker lists: the bus holds a
        # new call's records until then.
        self._on_listed = on_listed
        self._timing = timing_of(config)
        self._delivered = delivered
        self._on_fenced = on_fenced
        self._clock = clock
        self.topic = topics.nodes_topic(config.topic_prefix)
        self.inbound_topic = topics.inbound_topic(config.topic_prefix)
        self.state_topic = topics.state_topic(config.topic_prefix)
        self.book = ls.LeaseBook(config.node_id, self._timing)
        self.holdings = ls.Holdings()
        self._seq = 0
        self._last_sent = float("-inf")
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tp = TopicPartition(self.topic, 0)
        self._position = 0  # next offset to read
        self._read = asyncio.Event()  # set whenever records were applied
        self._dirty = asyncio.Event()  # a lease should be written now
        self._tasks: list[asyncio.Task[None]] = []
        self._reaping: set[tuple[str, int]] = set()
        self._stopping = False

    @property
    def epoch(self) -> int:
        return self.book.epoch

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Read the leases, end this id's previous calls, take an epoch: before any call."""
        c = self._c
        await self._ensure_topic()
        kafka = target(c.kafka, c.kafka_access)
        self._producer = AIOKafkaProducer(
            **kafka, acks="all", enable_idempotence=True, linger_ms=0,
            client_id=f"kgw-{c.node_id}-lease")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **kafka, enable_auto_commit=False,
            client_id=f"kgw-{c.node_id}-nodes")
        await self._consumer.start()
        self._consumer.assign([self._tp])
        await self._consumer.seek_to_beginning(self._tp)
        self._tasks.append(asyncio.ensure_future(self._read_loop()))
        end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        await self._read_up_to(end)
        self.book.epoch = self.book.next_epoch()
        old = self.book.predecessor()
        if old is not None:
            log.warn("node {node_id} epoch {e} left {n} calls; ending them (node_lost)",
                     node_id=old.node_id, e=old.epoch, n=len(old.calls))
            await self._reap(old, wait_for_other=True)
        await self._write_lease()
        self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
        log.info("lease on {topic}: node {node_id} epoch {epoch}, {lease}s + {margin}s",
                 topic=self.topic, node_id=c.node_id, epoch=self.epoch,
                 lease=self._timing.lease_s, margin=self._timing.margin_s)

    async def stop(self) -> None:
        """A final, closed lease: the node's calls have ended through the normal path."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        try:
            if self._producer is not None and self.epoch:
                # Ends the bus could not deliver stay listed, for a peer to end.
                closed = self._delivered()
                if closed:
                    self.holdings = ls.Holdings()
                else:
                    log.error("shutdown: the bus did not deliver everything; leaving {n} calls "
                              "in the lease for a peer to end", n=len(self.holdings.calls()))
                await asyncio.wait_for(self._write_lease(closed=closed), CLOSE_TIMEOUT_S)
        except (KafkaError, TimeoutError) as e:
            log.error("final lease not written: {err!r}", err=e)
        finally:
            await stop_within((self._consumer, self._producer), "lease")

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(**target(self._c.kafka, self._c.kafka_access))
        await admin.start()
        try:
            if self.topic not in set(await admin.list_topics()):
                configs = {"cleanup.policy": "compact"}
                if self._c.min_insync_replicas > 1:
                    configs["min.insync.replicas"] = str(self._c.min_insync_replicas)
                try:
                    await admin.create_topics([NewTopic(
                        self.topic, 1, self._c.replication_factor, topic_configs=configs)])
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()

    # --- from the node ---------------------------------------------------------

    def call_started(self, call_id: str) -> None:
        """Listed at once, not at the next heartbeat: the window is one lease write."""
        self.holdings = self.holdings.started(call_id, _wall_us())
        self._dirty.set()

    def end_delivered(self, call_id: str) -> None:
        """The bus says this call's ended record is on the broker."""
        self.holdings = self.holdings.end_delivered(call_id)
        self._dirty.set()

    def call_ended(self, call_id: str) -> None:
        """Listed as ending until the bus has delivered what it holds."""
        self.holdings = self.holdings.ended(call_id)
        self._dirty.set()

    # --- writing ---------------------------------------------------------------

    async def _send(self, rec: ls.NodeRecord) -> Any:
        assert self._producer is not None
        return await self._producer.send_and_wait(
            self.topic, records.encode_node_record(rec), key=ls.key_of(rec).encode(),
            partition=0, headers=_NODE_HEADERS)

    async def _write_lease(self, closed: bool = False) -> None:
        self._seq += 1
        calls = () if closed else self.holdings.calls()
        rec = ls.lease(self._c.node_id, self.epoch, self._seq, _wall_us(), self._timing,
                       calls, closed)
        self._last_sent = self._clock()
        self.book.probe_sent(self._seq, self._last_sent)
        try:
            await self._send(rec)
        except KafkaError:
            self.book.probe_failed()
            raise
        self._on_listed([c.call_id for c in calls])

    async def _heartbeat_loop(self) -> None:
        t = self._timing
        next_beat = self._clock() + t.heartbeat_s
        while True:
            now = self._clock()
            wake = next_beat
            if self.holdings.ending:
                wake = min(wake, now + _ENDING_POLL_S)
            deadline = self.book.next_deadline()
            if deadline is not None and deadline > now:
                wake = min(wake, deadline)
            try:
                await asyncio.wait_for(self._dirty.wait(), max(0.0, wake - now))
            except TimeoutError:
                pass
            write = self._dirty.is_set()  # a call started or ended
            self._dirty.clear()
            now = self._clock()
            self.book.check_probes(now)
            if now >= next_beat:
                write = True
            if deadline is not None and now >= deadline > self._last_sent:
                write = True  # the probe that may prove a peer's lease expired
            if self.holdings.ending and self._delivered():
                self.holdings = self.holdings.delivered()
                write = True
            if not write:
                continue
            next_beat = now + t.heartbeat_s
            try:
                # Never longer than a beat: a slow broker must not stop the probes.
                await asyncio.wait_for(self._write_lease(), t.heartbeat_s)
            except (KafkaError, TimeoutError) as e:
                self.book.probe_failed()
                log.warn("lease heartbeat failed: {err!r}", err=e)

    # --- reading ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(self._tp, timeout_ms=500)
            except KafkaError as e:
                log.error("nodes consumer: {err!r}; retrying", err=e)
                await asyncio.sleep(1)
                continue
            now = self._clock()
            for msg in batches.get(self._tp, ()):
                self._position = msg.offset + 1
                if msg.value is None:
                    continue  # a tombstone
                try:
                    rec = records.decode_node_record(msg.value)
                except records.BadRecord as e:
                    log.warn("nodes topic offset {o}: {err}", o=msg.offset, err=e)
                    continue
                self.book.apply(rec, now)
            # Compaction leaves gaps in offsets: the consumer's position, not the last
            # record's offset, says how far the partition has been read.
            position = await consumer.position(self._tp)
            if batches or position > self._position:
                self._position = max(self._position, position)
                self._read.set()
                self._after_read()

    def _after_read(self) -> None:
        if self._stopping or not self.epoch:
            return
        fence = self.book.fenced()
        if fence is not None:
            self._on_fenced(fence)
            return
        for lease in self.book.expired():
            key = (lease.node_id, lease.epoch)
            if key in self._reaping:
                continue
            log.warn("node {node_id} epoch {e}: lease expired with {n} calls; claiming",
                     node_id=lease.node_id, e=lease.epoch, n=len(lease.calls))
            self._tasks.append(asyncio.ensure_future(self._reap(lease)))

    async def _read_up_to(self, offset: int, timeout: float = 30.0) -> None:
        """Until every record before ``offset`` has been applied."""
        deadline = self._clock() + timeout
        while self._position < offset:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"nodes topic not read up to offset {offset}")
            self._read.clear()
            try:
                await asyncio.wait_for(self._read.wait(), remaining)
            except TimeoutError:
                pass

    # --- ending a lost epoch -----------------------------------------------------

    async def _reap(self, lease: ls.Lease, wait_for_other: bool = False) -> None:
        key = (lease.node_id, lease.epoch)
        self._reaping.add(key)
        try:
            claim = self.book.claim(lease, _wall_us())
            meta = await self._send(claim)
            await self._read_up_to(meta.offset + 1)
            if not self.book.won(claim):
                winner = self.book.winners[key]
                log.info("node {node_id} epoch {e}: node {w} claimed first", node_id=key[0],
                         e=key[1], w=winner.claimer_id)
                if wait_for_other:
                    await self._wait_settled(key)
                return
            assert self._producer is not None
            ends = ls.lost_ends(claim, time.time())
            futures = [await self._producer.send(
                self.inbound_topic, records.encode_inbound(rec, lease.node_id),
                key=rec.call_id.encode(), headers=_INBOUND_HEADERS) for rec in ends]
            await asyncio.gather(*futures)
            await self._tombstone([rec.call_id for rec in ends])
            await self._send(ls.settlement(claim, _wall_us()))
            log.warn("node {node_id} epoch {e}: ended {n} calls node_lost", node_id=key[0],
                     e=key[1], n=len(ends))
        except Exception:
            log.failure("node {node_id} epoch {e}: ending its calls failed", node_id=key[0],
                        e=key[1])
            if wait_for_other:
                raise
        finally:
            self._reaping.discard(key)

    async def _tombstone(self, call_ids: list[str]) -> None:
        """The ended calls leave the call-state topic (after their ends are acknowledged).
        A failure is logged and the settlement written all the same: the ends are on the
        bus, and a winner that never settles would hold up a returning node."""
        assert self._producer is not None
        try:
            await asyncio.gather(*[await self._producer.send(
                self.state_topic, None, key=call_id.encode()) for call_id in call_ids])
        except KafkaError as e:
            log.error("{n} calls not deleted from {topic}: {err!r}", n=len(call_ids),
                      topic=self.state_topic, err=e)

    async def _wait_settled(self, key: tuple[str, int]) -> None:
        t = self._timing
        limit = 2 * (t.lease_s + t.margin_s)
        deadline = self._clock() + limit
        while not self.book.is_settled(*key):
            if self._clock() >= deadline:
                log.error("node {node_id} epoch {e}: the winning claim was not settled within "
                          "{s}s; going on", node_id=key[0], e=key[1], s=limit)
                return
            self._read.clear()
            try:
                await asyncio.wait_for(self._read.wait(), 0.5)
            except TimeoutError:
                pass
