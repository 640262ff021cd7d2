"""The project's local Kafka broker (gateway.localkafka) against a real aiokafka client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.localkafka import LocalKafka


async def _round_trip(bootstrap: str) -> bytes:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic("localkafka-smoke", num_partitions=1, replication_factor=1)]
        )
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait("localkafka-smoke", b"hello", key=b"k")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        "localkafka-smoke",
        bootstrap_servers=bootstrap,
        group_id="smoke",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    value: bytes = record.value
    return value


@pytest.mark.broker
def test_broker_round_trips_a_record_and_its_process_is_gone_after_stop() -> None:
    """A started broker round-trips an idempotent acks=all record and stop() ends its JVM."""
    kafka = LocalKafka()
    try:
        bootstrap = kafka.start()
        pid = kafka.pid
        assert pid is not None
        assert bootstrap.startswith("127.0.0.1:")
        # --reactor=asyncio keeps a loop running on this thread, so asyncio.run needs another one.
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(asyncio.run, _round_trip(bootstrap)).result() == b"hello"
    finally:
        kafka.stop()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"broker pid {pid} still exists after stop()")
    assert not kafka.data_dir.exists()


def _gone(pid: int) -> bool:
    """Whether `pid` has exited: no such process, or a zombie its new parent (init) will reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.broker
def test_cli_starts_a_three_broker_cluster_and_stop_ends_every_jvm(tmp_path: Path) -> None:
    """`start --brokers 3` leaves three broker JVMs running; `stop` on its dir ends them all."""
    data_dir = tmp_path / "kafka"
    cli = [sys.executable, "-m", "gateway.localkafka"]
    started = subprocess.run(
        [*cli, "start", "--brokers", "3", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )
    pids = [int(f.read_text()) for f in sorted(data_dir.glob("broker-*/kafka.pid"))]
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().removeprefix("kafka: ")
        assert len(bootstrap.split(",")) == 3
        assert all(a.startswith("127.0.0.1:") for a in bootstrap.split(","))
        assert len(pids) == 3 and not any(map(_gone, pids))
    finally:
        stopped = subprocess.run(
            [*cli, "stop", "--data-dir", str(data_dir)], capture_output=True, text=True,
            timeout=60,
        )
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 5
    while not all(map(_gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(map(_gone, pids)), f"broker pids {pids} outlived `stop`"
    assert not list(data_dir.glob("broker-*/kafka.pid"))
