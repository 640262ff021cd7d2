"""gateway/ops/metrics.py: build info, the loop-lag probe, call duration, the socket cap."""

from __future__ import annotations

import platform
from importlib import metadata

import pytest
from twisted.internet.task import Clock

from gateway.config import NodeConfig
from gateway.ops.metrics import LOOP_LAG_PERIOD_S, LoopLag, Metrics
from gateway.testing import FakeProvider, node_in_memory


def _lag(metrics: Metrics) -> tuple[float, float]:
    r = metrics.registry
    return (r.get_sample_value("kgw_event_loop_lag_seconds_count") or 0.0,
            r.get_sample_value("kgw_event_loop_lag_seconds_sum") or 0.0)


def test_build_info_names_the_package_version_and_python() -> None:
    r = Metrics().registry
    labels = {"version": metadata.version("knowlarity-gateway"),
              "python": platform.python_version()}
    assert r.get_sample_value("kgw_build_info", labels) == 1.0


def test_loop_lag_observes_how_late_each_tick_fires() -> None:
    """On time: 0 s; a tick due at 0.2 s run at 0.45 s (the loop was busy): 0.25 s."""
    clock, metrics = Clock(), Metrics()
    probe = LoopLag(clock, metrics.loop_lag)
    probe.start()
    probe.start()  # a second start arms no second timer
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(LOOP_LAG_PERIOD_S)
    assert _lag(metrics) == (1.0, 0.0)
    clock.advance(0.35)
    count, total = _lag(metrics)
    assert count == 2.0 and abs(total - 0.25) < 1e-9
    probe.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert _lag(metrics)[0] == 2.0


def test_the_node_exports_its_socket_cap() -> None:
    node, _bus, _ = node_in_memory(NodeConfig(max_sockets=7))
    assert node.metrics.registry.get_sample_value("kgw_max_sockets") == 7.0


def test_call_duration_is_observed_once_per_ended_call() -> None:
    node, bus, handshakes = node_in_memory()
    r = node.metrics.registry
    p = FakeProvider(node).open()
    node.clock.advance(3)
    p.send_close(1000)
    p.settle()
    assert r.get_sample_value("kgw_call_duration_seconds_count") == 1.0
    assert r.get_sample_value("kgw_call_duration_seconds_sum") == 3.0
    assert r.get_sample_value("kgw_call_duration_seconds_bucket", {"le": "5.0"}) == 1.0
    # A socket closed before its start message is no call.
    FakeProvider(node).open(start=None).send_close(1000)
    assert r.get_sample_value("kgw_call_duration_seconds_count") == 1.0


def test_plain_counters_read_as_prometheus_counters() -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from gateway.ops.metrics import PlainCounter

    plain_reg, stock_reg = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounter("kgw_things", "things", ("kind",), registry=plain_reg)
    stock = Counter("kgw_things", "things", ["kind"], registry=stock_reg)
    bare = PlainCounter("kgw_bytes", "bytes", registry=plain_reg)
    for kind, n in (("a", 3), ("b", 1), ("a", 2)):
        plain.labels(kind).inc(n)
        stock.labels(kind).inc(n)
    bare.inc(640)
    bare.inc()
    for kind in ("a", "b"):
        assert (plain_reg.get_sample_value("kgw_things_total", {"kind": kind})
                == stock_reg.get_sample_value("kgw_things_total", {"kind": kind}))
    assert plain_reg.get_sample_value("kgw_bytes_total") == 641
    plain_text = generate_latest(plain_reg).decode()
    stock_text = "".join(line for line in generate_latest(stock_reg).decode().splitlines(True)
                         if "_created" not in line)
    assert plain_text.startswith(stock_text)  # the same lines, without the _created ones
    with pytest.raises(ValueError):
        plain.labels("a", "extra")
