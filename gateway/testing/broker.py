"""Broker-backed harness pieces: readers of the call topics that group records by call,
a sender of commands as a bot sends them, and an SDK bot for the length of a block.
Public aiokafka APIs only.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from gateway import records, topics
from gateway.core import model as m
from gateway.sdk import BotSettings, Handler, Stats, run_bot


class TopicReader:
    """Reads a topic of call records from the beginning, every partition, no group.

    ``InboundReader``, ``OutboundReader`` and ``StateReader`` below pick the topic and
    decoder. A tombstone (no value) is kept as ``None``, under its key.
    """

    def __init__(self, bootstrap: str, topic: str, decode: Callable[[bytes], Any]) -> None:
        self._bootstrap = bootstrap
        self.topic = topic
        self._decode = decode
        self.by_call: dict[str, list[Any]] = defaultdict(list)
        # Each record's Kafka headers (name -> value), in the order of by_call.
        self.headers_by_call: dict[str, list[dict[str, bytes]]] = defaultdict(list)
        # The partition each call's records were last read from.
        self.partition_of: dict[str, int] = {}
        # (record, wall time it was read) in arrival order, for latency figures.
        self.arrivals: list[tuple[Any, float]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        parts = await self._partitions(timeout=30)
        c = self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap,
                                              enable_auto_commit=False)
        await c.start()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        self._task = asyncio.ensure_future(self._loop())

    async def _partitions(self, timeout: float) -> list[int]:
        """The topic's partitions, waiting for a node to create it."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                (desc,) = await admin.describe_topics([self.topic])
                if desc["error_code"] == 0 and desc["partitions"]:
                    return [p["partition"] for p in desc["partitions"]]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {self.topic} does not exist")
                await asyncio.sleep(0.2)
        finally:
            await admin.close()

    async def _loop(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            for msgs in batches.values():
                for msg in msgs:
                    rec = None if msg.value is None else self._decode(msg.value)
                    call_id = msg.key.decode() if rec is None else rec.call_id
                    self.by_call[call_id].append(rec)
                    self.headers_by_call[call_id].append(dict(msg.headers))
                    self.partition_of[call_id] = msg.partition
                    self.arrivals.append((rec, now))
            if batches:
                self._changed.set()

    async def wait_for(self, done: Callable[[TopicReader], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition on the inbound topic not met in time")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()


class InboundReader(TopicReader):
    """Caller audio and call events: ``<prefix>.calls.inbound``."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(bootstrap, topics.inbound_topic(prefix), records.decode_inbound)

    def ended(self, call_id: str) -> Any | None:
        """The call's CallEnded record, if read yet."""
        for rec in self.by_call.get(call_id, ()):
            if rec.WhichOneof("body") == "ended":
                return rec
        return None

    def started_calls(self) -> list[Any]:
        return [recs[0] for recs in self.by_call.values()
                if recs and recs[0].WhichOneof("body") == "started"]


class OutboundReader(TopicReader):
    """What nodes sent to the provider: ``<prefix>.calls.outbound``."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(bootstrap, topics.outbound_topic(prefix), records.decode_outbound)


class StateReader(TopicReader):
    """Each call's started record, and ``None`` for its tombstone: ``<prefix>.calls.state``."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(bootstrap, topics.state_topic(prefix), records.decode_inbound)

    def live(self) -> set[str]:
        """Calls whose latest state record is a started record, not a tombstone."""
        return {call_id for call_id, recs in self.by_call.items() if recs and recs[-1] is not None}


class CommandSender:
    """Sends commands the way a bot does: to the call's reply topic, keyed by call id."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                          enable_idempotence=True, linger_ms=0)

    async def start(self) -> None:
        await self._producer.start()

    async def send(self, reply_topic: str, call_id: str, body: m.CommandBody) -> None:
        cmd = m.Command(call_id=call_id, body=body, sent_at=time.time())
        await self._producer.send_and_wait(reply_topic, records.encode_command(cmd),
                                           key=call_id.encode(),
                                           headers=topics.type_headers(topics.COMMAND_TYPE))

    async def stop(self) -> None:
        await self._producer.stop()


@asynccontextmanager
async def running_bot(handler: Handler, settings: BotSettings, *,
                      ready_timeout_s: float = 60.0, stop_timeout_s: float = 30.0
                      ) -> AsyncIterator[asyncio.Task[Stats]]:
    """An SDK bot on a real broker for the body of the block, for integration tests of
    bots: entered once it holds partitions, stopped (and its errors raised) on exit."""
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(run_bot(handler, settings, ready=ready, stop=stop))
    try:
        done, _ = await asyncio.wait({task, asyncio.ensure_future(ready.wait())},
                                     timeout=ready_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # it failed to start: raise why
        if not ready.is_set():
            raise TimeoutError(f"the bot held no partition within {ready_timeout_s:g} s")
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout_s)
