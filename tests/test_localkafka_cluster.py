"""The project's local 3-broker Kafka cluster (LocalKafkaCluster) losing a partition leader."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from gateway.localkafka import LocalKafkaCluster


def _in_sync(cluster: LocalKafkaCluster, topic: str) -> bool:
    """All three brokers in the ISR; a broker still coming up may refuse the question."""
    try:
        return len(cluster.partition(topic).isr) == 3
    except KafkaError:
        return False

pytestmark = pytest.mark.broker

RECORDS = 2000
KILL_AT = 600  # the record before which the leader is SIGKILLed
SEND_EVERY_S = 0.004  # paced, so producing goes on for seconds before, during and after


@dataclass
class Failover:
    victim: int
    new_leader: int
    election_s: float  # SIGKILL until Metadata names another leader
    longest_ack_gap_s: float  # the producer's view of the outage
    offsets: list[int]  # as acked to the producer, in send order


async def _produce_through_failover(cluster: LocalKafkaCluster, topic: str) -> Failover:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(topic, num_partitions=1, replication_factor=3,
                     topic_configs={"min.insync.replicas": "2"})
        ])
    finally:
        await admin.close()
    victim = await asyncio.to_thread(cluster.wait_for_leader, topic, 0)

    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    acked_at: list[float] = []
    elected_at: list[float] = []
    try:
        futures = []
        for i in range(RECORDS):
            if i == KILL_AT:
                await asyncio.gather(*futures)  # all acked by the leader about to die
                killed_at = time.monotonic()
                cluster.kill(victim)
                election = asyncio.ensure_future(
                    asyncio.to_thread(cluster.wait_for_leader, topic, 0, victim, 30.0)
                )
                election.add_done_callback(lambda _: elected_at.append(time.monotonic()))
            future = await producer.send(topic, str(i).encode(), key=b"one-key")
            future.add_done_callback(lambda _: acked_at.append(time.monotonic()))
            futures.append(future)
            await asyncio.sleep(SEND_EVERY_S)
        acked = await asyncio.gather(*futures)
        new_leader = await election
    finally:
        await producer.stop()
    gaps = [b - a for a, b in zip(acked_at, acked_at[1:], strict=False)]
    return Failover(
        victim=victim,
        new_leader=new_leader,
        election_s=elected_at[0] - killed_at,
        longest_ack_gap_s=max(gaps),
        offsets=[m.offset for m in acked],
    )


async def _read_all(bootstrap: str, topic: str) -> tuple[list[bytes], int]:
    """Every value on partition 0 from the start, and the partition's end offset."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < end and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values += [r.value for r in batch.get(tp, [])]
        return values, end
    finally:
        await consumer.stop()


def test_sigkilled_leader_mid_stream_loses_reorders_and_duplicates_nothing() -> None:
    """A leader SIGKILLed mid-stream costs an idempotent acks=all producer no record, duplicate
    or reordering, another broker takes over, and the killed one rejoins the ISR on restart."""
    cluster = LocalKafkaCluster(brokers=3)
    topic = "failover-" + uuid.uuid4().hex[:8]
    pids: list[int] = []
    try:
        began = time.monotonic()
        bootstrap = cluster.start(timeout=60)
        start_s = time.monotonic() - began
        pids = [pid for pid in map(cluster.pid, range(3)) if pid is not None]
        assert len(pids) == 3 and len(bootstrap.split(",")) == 3
        # --reactor=asyncio keeps a loop running on this thread, so asyncio.run needs another one.
        with ThreadPoolExecutor(1) as pool:
            failover = pool.submit(asyncio.run, asyncio.wait_for(
                _produce_through_failover(cluster, topic), 45)).result()
            values, end = pool.submit(asyncio.run, _read_all(bootstrap, topic)).result()

        assert not cluster.running(failover.victim)
        assert failover.new_leader != failover.victim
        assert failover.offsets == list(range(RECORDS))
        assert end == RECORDS
        assert values == [str(i).encode() for i in range(RECORDS)]

        began = time.monotonic()
        cluster.restart(failover.victim, timeout=30)
        restart_s = time.monotonic() - began
        deadline = time.monotonic() + 20
        while not _in_sync(cluster, topic):
            assert time.monotonic() < deadline, f"broker {failover.victim} never rejoined the ISR"
            time.sleep(0.2)
        rejoin_s = time.monotonic() - began
        print(
            f"\ncluster start {start_s:.1f}s; leader {failover.victim} SIGKILLed,"
            f" broker {failover.new_leader} elected after {failover.election_s:.1f}s"
            f" (longest gap between acks {failover.longest_ack_gap_s:.1f}s);"
            f" restart {restart_s:.1f}s, back in the ISR after {rejoin_s:.1f}s"
        )
    finally:
        cluster.stop()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"broker pid {pid} still exists after stop()")
    assert not cluster.data_dir.exists()
