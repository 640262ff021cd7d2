"""Prometheus metrics of one node, in their own registry so tests can read them.

Names follow Prometheus conventions: base units as suffixes (``_seconds``,
``_bytes``), counters exposed with ``_total`` (prometheus_client appends it),
histograms as ``_bucket``/``_sum``/``_count``. ``deploy/grafana`` and
``deploy/prometheus`` use these names; ``tests/test_dashboard.py`` fails when one
of them is not exported here.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily

from gateway import version

# Caller turns: 50 ms (a bot answering at once) to 5 s (one that is lost).
_TURN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Phone calls: a few seconds (a wrong number, an IVR hang-up) to an hour (the
# ingress's proxy timeouts, deploy/k8s/ingress.yaml, cut a socket there).
_CALL_BUCKETS = (5, 15, 30, 60, 120, 180, 300, 600, 900, 1800, 3600)
# Event-loop lag: 20 ms is one caller frame, 300 ms the playout lead (bot audio
# sent ahead of real time, gateway/core/playout.py): later than that, callers hear gaps.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5)

# How often the loop-lag probe fires. 100 ms: ten timers a second, each a
# callLater and one histogram observation (a few microseconds: under 0.01% of
# a core, against ~2500 frame callbacks a second at 50 calls). Any callback
# that holds the loop for 100 ms or more is seen by the next tick; shorter
# stalls are caught in proportion to their length, and a loop that is late
# all the time (saturated) is seen on every tick. 150 samples per 15 s scrape
# make a p99 over 5 minutes rest on 3000 of them.
LOOP_LAG_PERIOD_S = 0.1


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class PlainCounter:
    """A counter for the hot path (every frame, command or batch): its increments are
    plain additions, read by this collector when /metrics is scraped.

    prometheus_client's Counter takes a lock on every ``inc`` and another in
    ``labels``, for writers on several threads. Here only the loop's thread writes;
    a scrape (in Twisted's thread pool) reads each value whole under the GIL and
    copies the children before walking them. Exposed as a Counter is
    (``<name>_total``), without the ``_created`` sample.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 *, registry: CollectorRegistry) -> None:
        self._name, self._doc, self._labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], _Count] = {}
        if not labelnames:
            self._children[()] = _Count()
        registry.register(self)

    def labels(self, *values: str) -> _Count:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, not {values}")
            child = self._children[values] = _Count()
        return child

    def inc(self, amount: float = 1) -> None:
        self._children[()].value += amount

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self._name, self._doc, labels=self._labelnames)]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, child in list(self._children.items()):  # labels() may add one meanwhile
            family.add_metric(list(values), child.value)
        yield family


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds... and
        # python_info: the dashboard's CPU and memory panels, the memory alert.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build = Info("kgw_build", "the running gateway (exposed as kgw_build_info)",
                          registry=r)
        self.build.info({"version": version(), "python": platform.python_version()})
        self.live_calls = Gauge("kgw_live_calls", "calls with an open provider socket", registry=r)
        self.calls_started = Counter("kgw_calls_started", "calls that sent a valid start message",
                                     registry=r)
        self.calls_ended = Counter("kgw_calls_ended", "calls ended, by reason", ["reason"],
                                   registry=r)
        self.sockets_refused = Counter("kgw_sockets_refused",
                                       "handshakes refused (path, auth, draining)", ["why"],
                                       registry=r)
        self.sockets_closed_unstarted = Counter(
            "kgw_sockets_closed_unstarted", "sockets closed before a valid start message",
            registry=r)
        self.frames_in = PlainCounter("kgw_frames_in", "frames from the provider", ("kind",),
                                      registry=r)
        # Bound once: no dict lookup per frame.
        self.frames_in_binary = self.frames_in.labels("binary")
        self.frames_in_text = self.frames_in.labels("text")
        self.bytes_in = PlainCounter("kgw_payload_in_bytes", "payload bytes from the provider",
                                     registry=r)
        self.frames_out = PlainCounter("kgw_frames_out", "frames to the provider", registry=r)
        self.bytes_out = PlainCounter("kgw_payload_out_bytes", "payload bytes to the provider",
                                      registry=r)
        self.records_produced = PlainCounter("kgw_records_produced",
                                             "records acknowledged by Kafka", registry=r)
        self.records_dropped = Counter(
            "kgw_records_dropped", "records that never reached Kafka (each reported on the bus)",
            ["why"], registry=r)
        self.buffer_records = Gauge("kgw_buffer_records", "records waiting for the producer",
                                    registry=r)
        self.buffer_bytes = Gauge("kgw_buffer_bytes", "bytes waiting for the producer",
                                  registry=r)
        self.produce_latency = Histogram(
            "kgw_produce_latency_seconds", "record handed to the bus to acknowledged by Kafka",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.command_lag = Histogram(
            "kgw_command_lag_seconds", "command produced by a bot to received by the node",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.commands = PlainCounter("kgw_commands", "commands received, by outcome",
                                     ("outcome",), registry=r)
        self.calls_replaced = Counter(
            "kgw_calls_replaced", "live calls ended by a newer socket for the same call id",
            registry=r)
        self.sockets_not_reading = Counter(
            "kgw_sockets_not_reading",
            "provider sockets closed because they stopped reading (write buffer over its bound)",
            registry=r)
        self.commands_stale = Counter(
            "kgw_commands_stale",
            "commands rejected because they were sent longer ago than --max-command-age-s",
            registry=r)
        self.topic_partitions = Gauge(
            "kgw_topic_partitions", "partitions of each topic the node writes, as it last saw",
            ["topic"], registry=r)
        self.partition_changes = Counter(
            "kgw_topic_partition_changes",
            "times a topic's partition count changed under the running node", ["topic"],
            registry=r)
        self.bus_task_failures = Counter(
            "kgw_bus_task_failures", "unexpected failures of the node's Kafka tasks (restarted)",
            ["task"], registry=r)
        self.kafka_up = Gauge("kgw_kafka_up", "1 while the producer is delivering", registry=r)
        self.turn_latency = Histogram(
            "kgw_turn_latency_seconds",
            "end of the caller's speech to the first bot audio sent after it (each turn)",
            buckets=_TURN_BUCKETS, registry=r)
        self.call_duration = Histogram(
            "kgw_call_duration_seconds", "start message to end of each call, once per ended call",
            buckets=_CALL_BUCKETS, registry=r)
        self.max_sockets = Gauge(
            "kgw_max_sockets", "the node's --max-sockets (for kgw_live_calls / kgw_max_sockets)",
            registry=r)
        self.loop_lag = Histogram(
            "kgw_event_loop_lag_seconds",
            f"how late a timer due every {LOOP_LAG_PERIOD_S} s fires on the node's event loop",
            buckets=_LAG_BUCKETS, registry=r)


class LoopLag:
    """Observes into ``histogram`` how late a timer on ``clock`` fires, every ``period_s``.

    Lateness is how long a callback waits behind others on the one thread that
    serves every call: the delay every frame and playout clip of the node sees too.
    """

    def __init__(self, clock: Any, histogram: Histogram,
                 period_s: float = LOOP_LAG_PERIOD_S) -> None:
        self._clock = clock
        self._histogram = histogram
        self._period = period_s
        self._call: Any = None
        self._due = 0.0

    def start(self) -> None:
        if self._call is None:
            self._arm()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self) -> None:
        self._due = self._clock.seconds() + self._period
        self._call = self._clock.callLater(self._period, self._tick)

    def _tick(self) -> None:
        # asyncio runs timers due within its clock resolution: never negative.
        self._histogram.observe(max(0.0, self._clock.seconds() - self._due))
        self._arm()
