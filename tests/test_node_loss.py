"""A SIGKILLed node's calls still end exactly once on the bus (gateway.lease.rules).

Every node runs as its own process (``knowlarity-gateway serve``), so it can be
killed without any chance to clean up; the simulated provider is a process too.
Short leases come from the environment (KGW_LEASE_S, KGW_LEASE_MARGIN_S).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from test_end_to_end import PATH, in_twisted, reading

from gateway.children import Child
from gateway.core import model as m
from gateway.lease.rules import LOST_SEQ
from gateway.ports import free_port
from gateway.records import end_reason
from gateway.testing import InboundReader

pytestmark = pytest.mark.broker

LEASE_S = 3.0
MARGIN_S = 2.0
CALLS = 3
# Round trips to the broker on a loaded 2-core machine: claim, read back, ends, settle.
SLACK_S = 2.0



class Proc(Child):
    """A child process whose output lines are collected, so a test can wait for one."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        super().__init__(name, argv, on_line=self.lines.append, env=env)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    async def wait_for_line(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ended = self.wait_output(0)  # asked first: then no line is still to come
            if any(text in line for line in self.lines):
                return
            if ended or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no line with {text!r}:\n" + self.tail())
            await asyncio.sleep(0.05)

    async def exit_status(self, timeout: float) -> int:
        """The status it exits with, waited for off the reactor's thread."""
        return await asyncio.to_thread(self.wait, timeout)


async def start_node(bootstrap: str, prefix: str, node_id: str, port: int) -> Proc:
    node = Proc(node_id, [
        sys.executable, "-m", "gateway.cli", "serve", "--listen",
        f"tcp:{port}:interface=127.0.0.1", "--kafka", bootstrap, "--node-id", node_id,
        "--topic-prefix", prefix, "--metrics-listen", "", "--inbound-partitions", "3",
        "--drain-timeout-s", "1"],
        env={"KGW_LEASE_S": str(LEASE_S), "KGW_LEASE_MARGIN_S": str(MARGIN_S)})
    await node.wait_for_line("listening on")
    return node


async def start_calls(port: int) -> Proc:
    return Proc("simulator", [
        sys.executable, "-m", "gateway.simulator", "--url", f"ws://127.0.0.1:{port}{PATH}",
        "--calls", str(CALLS), "--seconds", "120", "--json"])


@asynccontextmanager
async def processes() -> AsyncIterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def ends(inbound: InboundReader, call_ids: list[str]) -> dict[str, list[object]]:
    return {c: [r for r in inbound.by_call[c] if r.WhichOneof("body") == "ended"]
            for c in call_ids}


async def place_calls_and_kill(procs: list[Proc], node: Proc, port: int,
                               inbound: InboundReader) -> list[str]:
    """Place CALLS calls on ``node``, SIGKILL it once they all stream audio."""
    procs.append(await start_calls(port))
    await inbound.wait_for(lambda r: len(r.started_calls()) == CALLS and all(
        any(x.WhichOneof("body") == "audio" for x in recs) for recs in r.by_call.values()))
    call_ids = sorted(r.call_id for r in inbound.started_calls())
    assert all(not e for e in ends(inbound, call_ids).values())
    node.kill()
    return call_ids


def check_lost_once(inbound: InboundReader, call_ids: list[str], by: str) -> None:
    for call_id, found in ends(inbound, call_ids).items():
        assert len(found) == 1, f"{call_id}: {len(found)} ended records"
        (rec,) = found
        assert end_reason(rec) is m.EndReason.NODE_LOST  # type: ignore[arg-type]
        assert rec.node_id == "n1"  # type: ignore[attr-defined]
        assert rec.record_seq == LOST_SEQ  # type: ignore[attr-defined]
        assert f"ended by node {by}" in rec.ended.detail  # type: ignore[attr-defined]


@in_twisted
async def test_restarted_node_ends_its_lost_calls_before_listening(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A node SIGKILLed with 3 live calls and restarted with the same id writes exactly
    one NODE_LOST end per call during its start, before it listens again."""
    async with processes() as procs:
        port = free_port()
        node = await start_node(kafka_bootstrap, topic_prefix, "n1", port)
        procs.append(node)
        async with reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            call_ids = await place_calls_and_kill(procs, node, port, inbound)
            killed = time.monotonic()
            again = await start_node(kafka_bootstrap, topic_prefix, "n1", free_port())
            listening = time.monotonic()
            procs.append(again)
            await inbound.wait_for(
                lambda r: all(ends(r, call_ids).values()), timeout=LEASE_S + MARGIN_S + 30)
            ended = time.monotonic()
            print(f"restart: listening {listening - killed:.2f}s after SIGKILL, "
                  f"all {CALLS} NODE_LOST ends read {ended - killed:.2f}s after it")
            await asyncio.sleep(1.0)  # a second end, if any, would be read by now
            check_lost_once(inbound, call_ids, by="n1 epoch 2")
            # Written during start(): the log line comes before the node listens.
            text = "\n".join(again.lines)
            assert "ended 3 calls node_lost" in text, text[-3000:]
            assert text.index("ended 3 calls node_lost") < text.index("listening on")


@in_twisted
async def test_peer_ends_the_calls_of_a_node_that_does_not_return(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A node SIGKILLed with 3 live calls and not restarted has each call ended exactly
    once, NODE_LOST, by a live peer within lease plus margin of the kill."""
    async with processes() as procs:
        peer = await start_node(kafka_bootstrap, topic_prefix, "n2", free_port())
        procs.append(peer)
        port = free_port()
        node = await start_node(kafka_bootstrap, topic_prefix, "n1", port)
        procs.append(node)
        async with reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            call_ids = await place_calls_and_kill(procs, node, port, inbound)
            killed = time.monotonic()
            await inbound.wait_for(
                lambda r: all(ends(r, call_ids).values()), timeout=LEASE_S + MARGIN_S + 30)
            elapsed = time.monotonic() - killed
            print(f"peer: all {CALLS} NODE_LOST ends read {elapsed:.2f}s after SIGKILL "
                  f"(lease {LEASE_S}s + margin {MARGIN_S}s)")
            assert elapsed <= LEASE_S + MARGIN_S + SLACK_S
            await asyncio.sleep(LEASE_S)  # a second end, if any, would be read by now
            check_lost_once(inbound, call_ids, by="n2 epoch 1")
            assert peer.alive(), "the peer keeps running"


@in_twisted
async def test_a_node_cut_off_past_its_lease_is_fenced_and_exits(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A node frozen (SIGSTOP) past lease plus margin has its calls ended NODE_LOST once by
    a peer, and on waking it reads the claim against its epoch and exits with status 75
    instead of writing ends of its own."""
    async with processes() as procs:
        peer = await start_node(kafka_bootstrap, topic_prefix, "n2", free_port())
        procs.append(peer)
        port = free_port()
        node = await start_node(kafka_bootstrap, topic_prefix, "n1", port)
        procs.append(node)
        async with reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            procs.append(await start_calls(port))
            await inbound.wait_for(lambda r: len(r.started_calls()) == CALLS)
            call_ids = sorted(r.call_id for r in inbound.started_calls())
            node.proc.send_signal(signal.SIGSTOP)
            try:
                await inbound.wait_for(lambda r: all(ends(r, call_ids).values()),
                                       timeout=LEASE_S + MARGIN_S + 30)
            finally:
                node.proc.send_signal(signal.SIGCONT)
            woke = time.monotonic()
            status = await node.exit_status(LEASE_S + 10)
            print(f"fenced: the frozen node exited {time.monotonic() - woke:.2f}s after "
                  f"waking, status {status}")
            assert status == 75, node.tail()
            await asyncio.sleep(1.0)
            check_lost_once(inbound, call_ids, by="n2 epoch 1")


@in_twisted
async def test_clean_shutdown_leaves_nothing_for_a_peer(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    """A node stopped with SIGTERM ends its calls NODE_SHUTDOWN and closes its lease, so a
    peer writes no NODE_LOST end for them, even well past lease plus margin."""
    async with processes() as procs:
        procs.append(await start_node(kafka_bootstrap, topic_prefix, "n2", free_port()))
        port = free_port()
        node = await start_node(kafka_bootstrap, topic_prefix, "n1", port)
        procs.append(node)
        async with reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
            procs.append(await start_calls(port))
            await inbound.wait_for(lambda r: len(r.started_calls()) == CALLS)
            call_ids = sorted(r.call_id for r in inbound.started_calls())
            node.proc.send_signal(signal.SIGTERM)
            assert await node.exit_status(30) == 0, node.tail()
            await inbound.wait_for(lambda r: all(ends(r, call_ids).values()))
            await asyncio.sleep(LEASE_S + MARGIN_S + SLACK_S)
            for call_id, found in ends(inbound, call_ids).items():
                assert [end_reason(r) for r in found] == [m.EndReason.NODE_SHUTDOWN], call_id
