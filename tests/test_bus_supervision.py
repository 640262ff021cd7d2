"""A bus task that fails is restarted; one that keeps failing stops the node (no broker)."""

from __future__ import annotations

import asyncio

import pytest
from test_clock import run_in_own_loop
from test_server import Provider, make_node, metric, node

from gateway.config import NodeConfig
from gateway.kafka import bus as bus_module
from gateway.kafka.bus import Bus
from gateway.node import Node
from gateway.ops.metrics import Metrics


@pytest.mark.parametrize(("failures", "fatal"), [(1, False), (4, False), (5, True)])
def test_a_failing_task_is_restarted_until_it_keeps_failing(
        monkeypatch: pytest.MonkeyPatch, failures: int, fatal: bool) -> None:
    """Each unexpected exception restarts the task and is counted; the fifth within a
    minute calls on_fatal and the task stays down."""
    monkeypatch.setattr(bus_module, "_RESTART_DELAY_S", 0.0)
    metrics = Metrics()
    fatal_why: list[str] = []

    async def run() -> int:
        bus = Bus(NodeConfig(), metrics, lambda cmd: None, on_fatal=fatal_why.append)
        runs = 0

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs <= failures:
                raise AssertionError("aiokafka surprise")

        await asyncio.wait_for(bus._supervise("drain", flaky), 5)
        assert bus.healthy is not fatal
        return runs

    runs = run_in_own_loop(run())
    assert metrics.registry.get_sample_value("kgw_bus_task_failures_total",
                                             {"task": "drain"}) == min(failures, 5)
    assert bool(fatal_why) is fatal
    assert runs == (failures if fatal else failures + 1)


def test_a_node_whose_bus_failed_is_not_ready_and_says_why(node: Node) -> None:
    """on_fatal takes the node out of the load balancer and asks the entry point to stop."""
    p = Provider(node).open()
    assert node.ready
    node._bus_failed("bus task drain failed 5 times in 60s")
    assert not node.ready and node.failed.is_set()
    assert Provider(node).handshake() == 503
    assert metric(node, "kgw_sockets_refused_total", why="node is draining") == 1
    p.send_close(1000)


__all__ = ["make_node", "node"]


def test_readiness_follows_a_bus_that_failed_for_good(node: Node) -> None:
    """An unhealthy bus makes /readyz fail even while the node still accepts."""
    assert node.ready
    node.bus.healthy = False  # type: ignore[misc]
    assert not node.ready


def test_a_command_batch_no_retry_can_read_is_stepped_over() -> None:
    """A batch the consumer cannot decode (a codec this node lacks, a bad CRC) is skipped
    one offset at a time and counted, and the commands after it still arrive; before, the
    loop retried the same batch forever and commands stopped for every call."""
    from aiokafka import TopicPartition
    from aiokafka.errors import UnsupportedCodecError

    from gateway import records
    from gateway.core import model as m

    metrics = Metrics()
    got: list[m.Command] = []
    good = records.encode_command(m.Command(call_id="c1", body=m.ClearAudio()))

    class Consumer:
        def __init__(self) -> None:
            self.offset, self.seeks = 7, []

        async def getmany(self, timeout_ms: int, max_records: int) -> dict:
            if self.offset < 9:  # offsets 7 and 8: one unreadable batch of two
                raise UnsupportedCodecError("Libraries for snappy compression codec not found")
            if self.offset == 9:
                self.offset += 1
                return {"tp": [type("Msg", (), {"value": good})()]}
            await asyncio.sleep(3600)
            return {}

        async def position(self, tp: TopicPartition) -> int:
            return self.offset

        def seek(self, tp: TopicPartition, offset: int) -> None:
            self.seeks.append(offset)
            self.offset = offset

    async def run() -> Consumer:
        bus = Bus(NodeConfig(), metrics, got.append)
        consumer = bus._consumer = Consumer()  # type: ignore[assignment]
        task = asyncio.ensure_future(bus._command_loop())
        for _ in range(100):
            await asyncio.sleep(0)
            if got:
                break
        task.cancel()
        return consumer

    consumer = run_in_own_loop(run())
    assert consumer.seeks == [8, 9]
    assert [c.call_id for c in got] == ["c1"]
    assert metrics.registry.get_sample_value("kgw_commands_total",
                                             {"outcome": "unreadable"}) == 2
