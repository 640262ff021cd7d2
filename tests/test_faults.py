"""Faults an operator meets: a long broker freeze, Kafka absent at start, a topic that loses
partitions, SIGTERM during an outage. Each runs on a broker of its own (it is frozen,
started late or reshaped), with the node in this process or, for SIGTERM, in its own.

Costs in CI: the 60 s freeze about 85 s, the leader kill about 45 s, the others 20-40 s
each.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from test_end_to_end import in_twisted, node_config, reading, running_node, simulate, url_of
from twisted.internet import reactor

from gateway.core import model as m
from gateway.localkafka import LocalKafka, LocalKafkaCluster
from gateway.node import Node
from gateway.ports import free_port
from gateway.testing import CommandSender, InboundReader

pytestmark = pytest.mark.broker


@pytest.fixture
def own_kafka() -> Iterator[LocalKafka]:
    """A broker of this test's own (it will be frozen or reshaped), always resumed and stopped."""
    kafka = LocalKafka()
    kafka.start()
    yield kafka
    if kafka.pid:
        os.kill(kafka.pid, signal.SIGCONT)
    kafka.stop()



def check_call_complete(recs: list[Any], frames_sent: int, gapless: bool = True) -> None:
    """One started, one ended, every audio frame exactly once and in order, no gap
    (``gapless``: record_seq too; off when some records were left out of ``recs``)."""
    kinds = [r.WhichOneof("body") for r in recs]
    assert kinds.count("started") == 1 and kinds[0] == "started"
    assert kinds.count("ended") == 1 and kinds[-1] == "ended"
    assert "dropped" not in kinds
    seqs_all = [r.record_seq for r in recs]
    assert seqs_all == sorted(set(seqs_all)), "a record twice or out of order"
    if gapless:
        assert seqs_all == list(range(len(recs)))
    seqs = [r.audio.seq for r in recs if r.WhichOneof("body") == "audio"]
    assert seqs == list(range(frames_sent))


@in_twisted
async def test_a_60_s_freeze_loses_nothing_the_buffer_can_hold(own_kafka: LocalKafka,
                                                               topic_prefix: str) -> None:
    """With the broker frozen (SIGSTOP) for 60 s during 8 live calls, every call's audio
    is on the inbound topic exactly once and in order, with one started and one ended."""
    kafka = own_kafka
    config = node_config(kafka.bootstrap, topic_prefix)
    async with running_node(config) as node:
        sim = asyncio.ensure_future(simulate(url_of(node), [
            "--calls", "8", "--seconds", "75", "--linger-s", "0"]))
        await asyncio.sleep(5)
        os.kill(kafka.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        await asyncio.sleep(60)
        os.kill(kafka.pid, signal.SIGCONT)
        print(f"broker frozen for {time.monotonic() - frozen_at:.1f} s")
        result = await sim
        assert node.metrics.records_dropped.labels("buffer_full")._value.get() == 0
        assert node.metrics.records_dropped.labels("delivery_failed")._value.get() == 0

    calls = result["calls"]
    assert len(calls) == 8 and all(c["ended"] == "caller_hangup" for c in calls)
    async with reading(InboundReader(kafka.bootstrap, topic_prefix)) as inbound:
        for c in calls:
            await inbound.wait_for(lambda r, cid=c["call_id"]: r.ended(cid) is not None,
                                   timeout=120)
            check_call_complete(inbound.by_call[c["call_id"]], c["frames_sent"])


@in_twisted
async def test_kafka_absent_at_start_then_ready_once_it_answers(topic_prefix: str) -> None:
    """A node whose broker is not up keeps retrying, is not ready, and once the broker
    comes up it becomes ready and carries a call end to end."""
    port = free_port()
    config = node_config(f"127.0.0.1:{port}", topic_prefix)
    node = Node(config, reactor)
    start = asyncio.ensure_future(node.start())
    kafka = LocalKafka(port=port)
    try:
        await asyncio.sleep(4)
        assert not start.done() and not node.ready, "ready without a broker"
        await asyncio.get_running_loop().run_in_executor(None, kafka.start)
        await asyncio.wait_for(start, 90)
        assert node.ready
        result = await simulate(url_of(node), ["--seconds", "2", "--linger-s", "0"])
        (call,) = result["calls"]
        assert call["ended"] == "caller_hangup"
        async with reading(InboundReader(kafka.bootstrap, topic_prefix)) as inbound:
            await inbound.wait_for(lambda r: r.ended(call["call_id"]) is not None, timeout=60)
            check_call_complete(inbound.by_call[call["call_id"]], call["frames_sent"])
    finally:
        start.cancel()
        await node.shutdown()
        kafka.stop()


@in_twisted
async def test_a_topic_that_loses_partitions_is_noticed_and_loses_nothing(
        own_kafka: LocalKafka, topic_prefix: str) -> None:
    """The inbound topic recreated with fewer partitions while the node runs: the node
    counts and logs it, and a call placed afterwards is delivered whole."""
    kafka = own_kafka
    config = replace(node_config(kafka.bootstrap, topic_prefix), inbound_partitions=6)
    async with running_node(config) as node:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([config.inbound_topic])
            await asyncio.sleep(2)
            await admin.create_topics([NewTopic(config.inbound_topic, 1, 1)])
        finally:
            await admin.close()
        changes = node.metrics.partition_changes.labels(config.inbound_topic)
        deadline = time.monotonic() + 30
        while changes._value.get() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert changes._value.get() >= 1, "the node did not notice the change"
        assert node.metrics.topic_partitions.labels(config.inbound_topic)._value.get() == 1
        result = await simulate(url_of(node), ["--seconds", "2", "--linger-s", "0"])
    (call,) = result["calls"]
    async with reading(InboundReader(kafka.bootstrap, topic_prefix)) as inbound:
        await inbound.wait_for(lambda r: r.ended(call["call_id"]) is not None, timeout=60)
        check_call_complete(inbound.by_call[call["call_id"]], call["frames_sent"])


# What shutdown may take at most, in the node's own terms: the drain timeout, 7 s for the
# close handshakes, 10 s of flushing and 5 s for each of the bus's two Kafka clients to
# close, then the lease keeper's final lease (5 s) and its two clients (5 s each).
SHUTDOWN_SLACK_S = 7 + 10 + 2 * 5 + 5 + 2 * 5


@in_twisted
async def test_sigterm_during_an_outage_exits_within_the_bound(own_kafka: LocalKafka,
                                                               topic_prefix: str) -> None:
    """SIGTERM while the broker is frozen: the node exits within drain timeout plus the
    stated bound, and logs how many records it could not deliver."""
    kafka = own_kafka
    port = free_port()
    env = {**os.environ, "KGW_DRAIN_TIMEOUT_S": "1", "KGW_NODE_ID": "sigterm",
           "KGW_TOPIC_PREFIX": topic_prefix, "KGW_KAFKA": kafka.bootstrap,
           "KGW_LISTEN": f"tcp:{port}:interface=127.0.0.1", "KGW_METRICS_LISTEN": "",
           "KGW_INBOUND_PARTITIONS": "3"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        url = f"ws://127.0.0.1:{port}/vaani/knowlarity/setup-call-streams"
        await wait_listening(port, 60)
        sim = asyncio.ensure_future(simulate(url, ["--seconds", "20", "--linger-s", "0"]))
        await asyncio.sleep(2)
        os.kill(kafka.pid, signal.SIGSTOP)
        await asyncio.sleep(3)
        proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        out, _ = await asyncio.wait_for(proc.communicate(), 1 + SHUTDOWN_SLACK_S + 15)
        took = time.monotonic() - t
        print(f"exited {took:.1f} s after SIGTERM (bound {1 + SHUTDOWN_SLACK_S} s)")
        assert took <= 1 + SHUTDOWN_SLACK_S
        text = out.decode()
        assert "records not delivered" in text, text[-3000:]
        await asyncio.wait_for(sim, 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.3)
    raise TimeoutError(f"nothing listening on {port}")




@pytest.fixture
def cluster() -> Iterator[LocalKafkaCluster]:
    """Three brokers of this test's own, replication 3, min.insync.replicas 2."""
    c = LocalKafkaCluster(brokers=3)
    c.start()
    yield c
    c.stop()


@in_twisted
async def test_a_leader_killed_mid_call_costs_a_retry_not_a_record(
        cluster: LocalKafkaCluster, topic_prefix: str) -> None:
    """On a 3-broker cluster, SIGKILL the broker leading the partitions 5 live calls write
    to: every call's audio is on the topic exactly once and in order, and commands still
    reach the calls after the election."""
    config = replace(node_config(cluster.bootstrap, topic_prefix), replication_factor=3,
                     min_insync_replicas=2, inbound_partitions=3)
    sender = CommandSender(cluster.bootstrap)
    await sender.start()
    try:
        async with running_node(config) as node:
            sim = asyncio.ensure_future(simulate(url_of(node), [
                "--calls", "5", "--seconds", "25", "--linger-s", "0"]))
            deadline = time.monotonic() + 30
            while len(node.registry) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            call_ids = [p.call.call_id for p in node.registry.handles() if p.call]
            assert len(call_ids) == 5
            await asyncio.sleep(3)
            parts = [node.bus._partition(config.inbound_topic, c.encode()) for c in call_ids]
            leaders = [await asyncio.to_thread(cluster.leader, config.inbound_topic, p)
                       for p in parts]
            victim = max(set(leaders), key=leaders.count)
            assert victim is not None
            t = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            for p in set(parts):
                await asyncio.to_thread(cluster.wait_for_leader, config.inbound_topic, p,
                                        other_than=victim)
            print(f"broker {victim} (leader of {leaders.count(victim)} of the calls' "
                  f"partitions) killed; new leaders after {time.monotonic() - t:.1f} s")
            await asyncio.sleep(3)
            for cid in call_ids:
                await sender.send(config.commands_topic, cid, m.Mark("after-election"))
            result = await sim
    finally:
        await sender.stop()

    calls = {c["call_id"]: c for c in result["calls"]}
    assert set(calls) == set(call_ids)
    async with reading(InboundReader(cluster.bootstrap, topic_prefix)) as inbound:
        for cid, c in calls.items():
            await inbound.wait_for(lambda r, cid=cid: r.ended(cid) is not None, timeout=90)
            recs = inbound.by_call[cid]
            marks = [r for r in recs if r.WhichOneof("body") == "playback"
                     and r.playback.mark_name == "after-election"]
            assert len(marks) == 1, f"call {cid}: the command after the election was lost"
            check_call_complete([r for r in recs if r.WhichOneof("body") != "playback"],
                                c["frames_sent"], gapless=False)
