"""Prometheus metrics of one node, in their own registry so tests can read them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Caller turns: 50 ms (a bot answering at once) to 5 s (one that is lost).
_TURN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
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
        self.frames_in = Counter("kgw_frames_in", "frames from the provider", ["kind"], registry=r)
        # Bound once: labels() is a locked dict lookup, too dear for every frame.
        self.frames_in_binary = self.frames_in.labels("binary")
        self.frames_in_text = self.frames_in.labels("text")
        self.bytes_in = Counter("kgw_bytes_in", "payload bytes from the provider", registry=r)
        self.frames_out = Counter("kgw_frames_out", "frames to the provider", registry=r)
        self.bytes_out = Counter("kgw_bytes_out", "payload bytes to the provider", registry=r)
        self.records_produced = Counter("kgw_records_produced", "records acknowledged by Kafka",
                                        registry=r)
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
        self.commands = Counter("kgw_commands", "commands received, by outcome", ["outcome"],
                                registry=r)
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
