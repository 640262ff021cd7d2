"""What a bot needs to carry on with a call it never saw start: record headers on every
inbound record, and the compacted call-state topic (started while live, tombstone after).

The bus's side is tested without a broker (its outbox, and aiokafka's own batches
behind a producer that acknowledges at once); the rest on the real broker, with the
simulated provider in its own process as in tests/test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.producer.message_accumulator import BatchBuilder
from test_clock import run_in_own_loop
from test_end_to_end import in_twisted, node_config, reading, running_node, simulate, url_of
from test_node_loss import check_lost_once, place_calls_and_kill, processes, start_node

from gateway import topics
from gateway.config import NodeConfig
from gateway.core import model as m
from gateway.kafka.bus import Bus
from gateway.kafka.outbox import Entry
from gateway.ops.metrics import Metrics
from gateway.ports import free_port
from gateway.testing import CommandSender, InboundReader
from gateway.testing.broker import StateReader

PREFIX = "t"
CONFIG = NodeConfig(node_id="n7", topic_prefix=PREFIX)
INBOUND, OUTBOUND, STATE = CONFIG.inbound_topic, CONFIG.outbound_topic, topics.state_topic(PREFIX)
STARTED = topics.started_topic(PREFIX)


def expected_headers(rate: int, node_id: str = "n7", reply: str = CONFIG.commands_topic
                     ) -> list[tuple[str, bytes]]:
    return [*INBOUND_TYPE, ("kgw-reply-topic", reply.encode()),
            ("kgw-sample-rate", str(rate).encode()), ("kgw-node-id", node_id.encode())]


INBOUND_TYPE = [("kgw-type", b"knowlarity.gateway.v1.InboundRecord"), ("kgw-schema", b"1")]


def test_the_header_names_are_the_contract() -> None:
    """The names bots and the SDK rely on, spelled out: a rename must break this test."""
    assert (topics.HEADER_REPLY_TOPIC, topics.HEADER_SAMPLE_RATE, topics.HEADER_NODE_ID) == (
        "kgw-reply-topic", "kgw-sample-rate", "kgw-node-id")
    assert topics.state_topic("kgw") == "kgw.calls.state"
    assert topics.call_headers("a.b", 16000, "n1") == [
        *INBOUND_TYPE, ("kgw-reply-topic", b"a.b"), ("kgw-sample-rate", b"16000"),
        ("kgw-node-id", b"n1")]


def test_every_record_names_its_message_type_as_the_schemas_spell_it() -> None:
    """The type headers are the protobuf messages' full names, schema major version 1
    (the package's v1): a generic consumer decodes by them."""
    from gateway.proto.knowlarity.gateway.v1 import (
        command_pb2,
        inbound_pb2,
        nodes_pb2,
        outbound_pb2,
    )

    assert (topics.HEADER_TYPE, topics.HEADER_SCHEMA) == ("kgw-type", "kgw-schema")
    assert [topics.INBOUND_TYPE, topics.OUTBOUND_TYPE, topics.COMMAND_TYPE,
            topics.NODE_RECORD_TYPE] == [
        inbound_pb2.InboundRecord.DESCRIPTOR.full_name,
        outbound_pb2.OutboundRecord.DESCRIPTOR.full_name,
        command_pb2.Command.DESCRIPTOR.full_name, nodes_pb2.NodeRecord.DESCRIPTOR.full_name]
    assert inbound_pb2.DESCRIPTOR.package == f"knowlarity.gateway.v{topics.SCHEMA_VERSION}"


# --- the bus, no broker ---------------------------------------------------------------


def new_bus(config: NodeConfig = CONFIG, partitions: int = 3, **kwargs: Any) -> Bus:
    bus = Bus(config, Metrics(), **kwargs)
    # What the bus learns from the broker at start: every topic's partition count.
    bus._partition_counts = dict.fromkeys((INBOUND, OUTBOUND, STATE, STARTED), partitions)
    return bus


START = m.CallStart(call_id="", sample_rate=8000, caller="111", callee="222",
                    direction=m.Direction.INBOUND, provider_campaign="", fields={"a": 1},
                    shape="flat", raw='{"a":1}')


class Call:
    """One call's inbound records, numbered as the core numbers them."""

    def __init__(self, call_id: str, rate: int = 8000) -> None:
        self.call_id, self.rate, self.seq, self.chunks = call_id, rate, -1, 0

    def rec(self, body: m.InboundBody) -> m.Inbound:
        self.seq += 1
        return m.Inbound(self.call_id, self.seq, 1.0 + self.seq / 50, body)

    def started(self) -> m.Inbound:
        start = replace(START, call_id=self.call_id, sample_rate=self.rate)
        return self.rec(m.CallStarted(start, CONFIG.commands_topic, "/ws"))

    def audio(self) -> m.Inbound:
        self.chunks += 1
        return self.rec(m.CallerAudio(self.chunks - 1, 0, 1.0, b"\x01\x00" * 160, self.rate))

    def every_other_body(self) -> list[m.Inbound]:
        return [self.rec(m.ProviderEvent("{}", 1.0)),
                self.rec(m.PlaybackEvent(m.PlaybackKind.MARK_REACHED, "m1")),
                self.rec(m.CommandRejected("c9", "odd PCM length"))]

    def ended(self) -> m.Inbound:
        return self.rec(m.CallEnded(m.EndReason.CALLER_HANGUP))


def on(topic: str, entries: list[Entry], call_id: str = "") -> list[Entry]:
    return [e for e in entries if e.topic == topic and (not call_id or e.call_id == call_id)]


def test_every_inbound_record_of_a_call_carries_the_calls_headers() -> None:
    """Started, audio, events, playback, rejections and ended all carry reply topic, rate
    and node id; outbound audit records carry none."""
    bus = new_bus()
    call = Call("c1", rate=8000)
    for rec in [call.started(), call.audio(), *call.every_other_body(), call.ended()]:
        bus.publish(rec)
    bus.publish_outbound(m.Outbound("c1", 1.0, m.AudioSent(b"\x00\x00", 8000, 0)))
    entries = bus.outbox.take(100)
    inbound = on(INBOUND, entries)
    assert [e.record_seq for e in inbound] == list(range(6))
    assert all(e.headers.pairs == expected_headers(8000) for e in inbound)
    assert [e.headers.pairs for e in on(OUTBOUND, entries)] == [
        [("kgw-type", b"knowlarity.gateway.v1.OutboundRecord"), ("kgw-schema", b"1")]]


def test_the_bus_knows_a_calls_headers_from_its_start_to_its_end_only() -> None:
    """Learnt from the started record, forgotten after the ended; a second call of the
    same id (a replaced socket) gets its own rate; a call never started gets none."""
    bus = new_bus()
    a, b = Call("a", 8000), Call("b", 16000)
    assert bus.live_calls == 0
    bus.publish(a.started())
    bus.publish(b.started())
    assert bus.live_calls == 2
    bus.publish(a.ended())
    assert bus.live_calls == 1
    again = Call("a", 48000)
    again.seq = a.seq
    bus.publish(again.started())
    bus.publish(again.audio())
    bus.publish(b.audio())
    bus.publish(Call("never-started").audio())
    assert bus.live_calls == 2
    heads = {(e.call_id, e.record_seq): e.headers.pairs for e in on(INBOUND, bus.outbox.take(100))}
    assert heads[("a", 0)] == heads[("a", 1)] == expected_headers(8000)
    assert heads[("a", 2)] == heads[("a", 3)] == expected_headers(48000)
    assert heads[("b", 0)] == heads[("b", 1)] == expected_headers(16000)
    assert heads[("never-started", 0)] == INBOUND_TYPE
    bus.publish(again.ended())
    bus.publish(b.ended())
    assert bus.live_calls == 0


def one_call_entries() -> list[Entry]:
    """What the bus queues for one call: started, one audio record, ended."""
    bus = new_bus()
    call = Call("c1")
    bus.publish(call.started())
    bus.publish(call.audio())
    bus.publish(call.ended())
    return bus.outbox.take(100)


def test_a_call_writes_its_started_record_to_the_state_topic_then_a_tombstone() -> None:
    """The state topic gets the started record's very bytes and headers, on the partition
    numbered like the call's inbound one, and after the ended a tombstone behind it."""
    entries = one_call_entries()
    started, *_, ended = on(INBOUND, entries)
    record, tombstone = on(STATE, entries)
    assert (record.value, record.headers) == (started.value, started.headers)
    assert record.partition == tombstone.partition == started.partition
    assert tombstone.value is None and not tombstone.headers.pairs
    assert record.order < tombstone.order
    assert record.precious and tombstone.precious and tombstone.ends_call


def test_a_call_s_started_record_is_kept_for_audit_on_the_started_topic() -> None:
    """The ``calls.started`` topic gets the started record's very bytes and headers, kept
    (precious), and nothing else of the call: no tombstone, no loss note."""
    entries = one_call_entries()
    started = on(INBOUND, entries)[0]
    (index,) = on(STARTED, entries)
    assert (index.value, index.headers, index.precious) == (started.value, started.headers, True)
    assert not index.ends_call


def test_state_records_survive_a_full_buffer_and_keep_their_order() -> None:
    """A buffer overflowing with audio drops audio, never a state record or tombstone."""
    config = replace(CONFIG, buffer_bytes=20_000, buffer_call_share_bytes=20_000)
    bus = new_bus(config, partitions=1)
    calls = [Call(f"c{i}") for i in range(20)]
    for call in calls:
        bus.publish(call.started())
    for _ in range(200):
        for call in calls:
            bus.publish(call.audio())
    for call in calls[:10]:
        bus.publish(call.ended())
    assert bus.outbox.dropped_total > 0
    state = bus.outbox.take_partition((STATE, 0), 1000)
    assert [(e.call_id, e.value is None) for e in state] == (
        [(c.call_id, False) for c in calls] + [(c.call_id, True) for c in calls[:10]])


def test_a_loss_note_written_after_the_end_still_carries_the_calls_headers() -> None:
    """Records dropped in an outage are reported after the call ended, when the bus has
    forgotten the call: the note takes its headers from what it stands for."""
    config = replace(CONFIG, buffer_bytes=20_000, buffer_call_share_bytes=20_000)
    bus = new_bus(config)
    call = Call("c1", rate=16000)
    bus.publish(call.started())
    for _ in range(100):
        bus.publish(call.audio())
    bus.publish(call.ended())
    assert bus.live_calls == 0
    (((call_id, topic), loss),) = bus.outbox.take_losses().items()
    note = bus._loss_note(call_id, topic, loss)
    assert (note.topic, note.headers.pairs) == (INBOUND, expected_headers(16000))


class _RecordingBatch:
    """aiokafka's own batch (so it checks what the bus appends), remembering each append."""

    def __init__(self) -> None:
        self._batch = BatchBuilder(256 * 1024, 0)
        self.appended: list[dict[str, Any]] = []

    def append(self, **record: Any) -> Any:
        meta = self._batch.append(**record)
        if meta is not None:
            self.appended.append(record)
        return meta


class AckingProducer:
    """Stands in for AIOKafkaProducer: every batch is acknowledged at once."""

    def __init__(self) -> None:
        self.written: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)

    def create_batch(self) -> _RecordingBatch:
        return _RecordingBatch()

    async def send_batch(self, batch: _RecordingBatch, topic: str, partition: int) -> Any:
        self.written[(topic, partition)] += batch.appended
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_headers_reach_aiokafka_and_the_lease_hears_of_an_end_once_its_tombstone_is_sent(
) -> None:
    """The bus hands each record's headers to aiokafka's batch; the node's lease is told a
    call's end is delivered only once both its ended record and its tombstone are."""
    delivered: list[str] = []

    async def run() -> tuple[AckingProducer, list[list[str]]]:
        bus = new_bus(on_end_delivered=delivered.append)
        producer = bus._producer = AckingProducer()  # type: ignore[assignment]
        call = Call("c1", rate=16000)
        for rec in (call.started(), call.audio(), call.ended()):
            bus.publish(rec)
        p = bus._partition(INBOUND, b"c1")
        seen = []
        await bus._send_partition((INBOUND, p))
        seen.append(list(delivered))
        await bus._send_partition((STATE, p))
        seen.append(list(delivered))
        return producer, seen

    producer, seen = run_in_own_loop(run())
    assert seen == [[], ["c1"]]
    (inbound_tp,) = [tp for tp in producer.written if tp[0] == INBOUND]
    assert [r["headers"] for r in producer.written[inbound_tp]] == [expected_headers(16000)] * 3
    state = producer.written[(STATE, inbound_tp[1])]
    assert [(r["value"] is None, r["headers"]) for r in state] == [
        (False, expected_headers(16000)), (True, [])]
    assert state[0]["value"] == producer.written[inbound_tp][0]["value"]


# --- on the broker -----------------------------------------------------------------


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
        (resource,) = response.resources
        return {entry[0]: entry[1] for entry in resource[4]}
    finally:
        await admin.close()


def headers_ok(reader: Any, call_id: str, node_id: str, reply: str, rate: int) -> None:
    want = {**dict(INBOUND_TYPE), "kgw-reply-topic": reply.encode(),
            "kgw-sample-rate": str(rate).encode(), "kgw-node-id": node_id.encode()}
    for rec, headers in zip(reader.by_call[call_id], reader.headers_by_call[call_id],
                            strict=True):
        assert headers == want, (rec.WhichOneof("body"), headers)


@pytest.mark.broker
@in_twisted
async def test_a_calls_records_carry_headers_and_the_state_topic_follows_its_life(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """On the broker: every inbound record of a simulated 8 kHz call (started, audio,
    playback, rejection, ended) carries the three headers; while the call is live the
    compacted state topic holds its started record (same content, headers and partition
    number), and once it has ended a tombstone."""
    config = node_config(kafka_bootstrap, topic_prefix)
    state_name = topics.state_topic(topic_prefix)
    sender = CommandSender(kafka_bootstrap)
    await sender.start()
    try:
        async with running_node(config) as node, \
                reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound, \
                reading(StateReader(kafka_bootstrap, topic_prefix)) as state:
            sim = asyncio.ensure_future(simulate(url_of(node), [
                "--seconds", "3", "--linger-s", "0", "--sample-rate", "8000"]))
            await state.wait_for(lambda r: bool(r.live()))
            (call_id,) = state.live()
            reply = state.by_call[call_id][0].started.reply_topic
            assert reply == config.commands_topic
            await sender.send(reply, call_id, m.Mark("m1"))
            await sender.send(reply, call_id, m.PlayAudio(b"\x00", 8000))  # odd: rejected
            (call,) = (await sim)["calls"]
            assert call["call_id"] == call_id
            await inbound.wait_for(lambda r: r.ended(call_id) is not None)
            await state.wait_for(lambda r: call_id not in r.live())

            recs = inbound.by_call[call_id]
            bodies = {r.WhichOneof("body") for r in recs}
            assert {"started", "audio", "playback", "command_rejected", "ended"} <= bodies
            headers_ok(inbound, call_id, "n1", config.commands_topic, 8000)
            # The state topic: the started record again, then the tombstone.
            record, tombstone = state.by_call[call_id]
            assert record == recs[0] and record.started.sample_rate == 8000
            assert record.SerializeToString() == recs[0].SerializeToString()
            assert state.headers_by_call[call_id] == [inbound.headers_by_call[call_id][0], {}]
            assert tombstone is None
            assert state.partition_of[call_id] == inbound.partition_of[call_id]
        described = await topic_config(kafka_bootstrap, state_name)
        assert described["cleanup.policy"] == "compact"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            (desc,) = await admin.describe_topics([state_name])
            assert len(desc["partitions"]) == config.inbound_partitions
        finally:
            await admin.close()
    finally:
        await sender.stop()


@pytest.mark.broker
@in_twisted
async def test_calls_ended_node_lost_leave_the_state_topic_too(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A node SIGKILLed with live calls and restarted with the same id ends them NODE_LOST
    and tombstones their entries in the state topic, which then lists none of them."""
    async with processes() as procs:
        port = free_port()
        node = await start_node(kafka_bootstrap, topic_prefix, "n1", port)
        procs.append(node)
        async with reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound, \
                reading(StateReader(kafka_bootstrap, topic_prefix)) as state:
            call_ids = await place_calls_and_kill(procs, node, port, inbound)
            await state.wait_for(lambda r: set(call_ids) <= set(r.by_call))
            assert set(call_ids) <= state.live()
            procs.append(await start_node(kafka_bootstrap, topic_prefix, "n1", free_port()))
            await state.wait_for(lambda r: not set(call_ids) & r.live(), timeout=60)
            await inbound.wait_for(lambda r: all(r.ended(c) is not None for c in call_ids))
            check_lost_once(inbound, call_ids, by="n1 epoch 2")
            for call_id in call_ids:
                record, tombstone = state.by_call[call_id]
                assert record.WhichOneof("body") == "started" and tombstone is None
