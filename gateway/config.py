"""The node's configuration: one frozen tree, from flags and environment."""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway import topics
from gateway.core.call import CallSettings
from gateway.core.knowlarity import AudioContentType
from gateway.core.playout import PlayoutSettings
from gateway.settings import (
    Setting,
    SettingError,
    add_settings,
    boolean,
    choice,
    non_negative,
    positive,
    resolve,
)


def _default_node_id() -> str:
    # Host names are stable per pod in a StatefulSet; topic names allow few characters.
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "node"


def _node_id(text: str) -> str:
    return topics.check_name_part("node id", text or _default_node_id())


def _finite(text: str) -> float:
    # float() takes "nan" and "inf"; NaN passes every "> 0" check and poisons timers.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


def _paths(text: str) -> tuple[str, ...]:
    items = tuple(p.strip().rstrip("/") for p in text.split(",") if p.strip())
    if not items or any(not p.startswith("/") for p in items):
        raise ValueError("a comma-separated list of paths, each starting with /")
    return items


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    parts = (p.strip() for p in text.split(","))
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts if p)


NODE_SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "KGW_LISTEN", "tcp:8080",
            "Twisted endpoint the provider connects to (e.g. tcp:8080, ssl:8443:privateKey=...)"),
    Setting("kafka", "KGW_KAFKA", "127.0.0.1:9092", "Kafka bootstrap servers, comma-separated"),
    Setting("node_id", "KGW_NODE_ID", "",
            "this node's id (empty: the host name); names its commands topic, so keep it "
            "stable across restarts",
            _node_id),
    Setting("topic_prefix", "KGW_TOPIC_PREFIX", "knowlarity", "prefix of every topic name",
            lambda t: topics.check_name_part("topic prefix", t)),
    Setting("paths", "KGW_PATHS", "/vaani/knowlarity/setup-call-streams,/knowlarity-stream",
            "accepted WebSocket paths (any prefix allowed before them; a further last segment "
            "is taken as the call id)", _paths),
    Setting("auth_token", "KGW_AUTH_TOKEN", "",
            "if set, sockets must carry it as ?token= or 'Authorization: Bearer'"),
    Setting("allow_from", "KGW_ALLOW_FROM", "",
            "if set, comma-separated CIDRs the provider may connect from", _networks),
    Setting("metrics_listen", "KGW_METRICS_LISTEN", "tcp:9100",
            "endpoint for /metrics, /healthz and /readyz; empty to disable"),
    Setting("max_frame_bytes", "KGW_MAX_FRAME_BYTES", "65536",
            "largest frame accepted from the provider (closed with 1009 above)", positive(int)),
    Setting("start_timeout_s", "KGW_START_TIMEOUT_S", "10",
            "time the provider has to send the start message", positive(_finite)),
    Setting("ending_timeout_s", "KGW_ENDING_TIMEOUT_S", "10",
            "time the provider has to close after a hang-up/transfer", positive(_finite)),
    Setting("idle_timeout_s", "KGW_IDLE_TIMEOUT_S", "60",
            "end a call after this long without any frame from the provider (0: never)",
            non_negative(_finite)),
    Setting("aggregate_ms", "KGW_AGGREGATE_MS", "0",
            "caller audio per inbound record (0: one record per frame); saves CPU, adds up to "
            "this much latency", non_negative(int)),
    Setting("audio_content_type", "KGW_AUDIO_CONTENT_TYPE", "wave",
            "playAudio encoding: wave (documented) or raw", choice("wave", "raw")),
    Setting("kill_audio_on_clear", "KGW_KILL_AUDIO_ON_CLEAR", "false",
            "also send the undocumented killAudio frame on clear", boolean),
    Setting("playout_paced", "KGW_PLAYOUT_PACED", "true",
            "hold bot audio and release it paced to real time (off: send at once)", boolean),
    Setting("playout_clip_ms", "KGW_PLAYOUT_CLIP_MS", "200",
            "largest clip of bot audio in one playAudio frame", positive(int)),
    Setting("playout_lead_ms", "KGW_PLAYOUT_LEAD_MS", "300",
            "how far ahead of real time bot audio is sent", non_negative(int)),
    Setting("playout_max_queue_ms", "KGW_PLAYOUT_MAX_QUEUE_MS", "120000",
            "bot audio held per call before further audio is dropped (and reported)",
            positive(int)),
    Setting("buffer_bytes", "KGW_BUFFER_BYTES", "67108864",
            "records held while Kafka is unreachable; beyond, oldest dropped and reported",
            positive(int)),
    Setting("linger_ms", "KGW_LINGER_MS", "5", "producer linger (batching delay)",
            non_negative(int)),
    Setting("inbound_partitions", "KGW_INBOUND_PARTITIONS", "12",
            "partitions when the node creates the inbound/outbound topics", positive(int)),
    Setting("replication_factor", "KGW_REPLICATION_FACTOR", "1",
            "replication factor when the node creates topics", positive(int)),
    Setting("drain_timeout_s", "KGW_DRAIN_TIMEOUT_S", "30",
            "on shutdown, how long live calls may go on before they are ended",
            non_negative(_finite)),
)


@dataclass(frozen=True)
class NodeConfig:
    listen: str = "tcp:8080"
    kafka: str = "127.0.0.1:9092"
    node_id: str = "node"
    topic_prefix: str = "knowlarity"
    paths: tuple[str, ...] = ("/vaani/knowlarity/setup-call-streams", "/knowlarity-stream")
    auth_token: str = ""
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    metrics_listen: str = "tcp:9100"
    max_frame_bytes: int = 65536
    buffer_bytes: int = 64 * 1024 * 1024
    linger_ms: int = 5
    inbound_partitions: int = 12
    replication_factor: int = 1
    drain_timeout_s: float = 30.0
    call: CallSettings = field(default_factory=CallSettings)

    @property
    def inbound_topic(self) -> str:
        return topics.inbound_topic(self.topic_prefix)

    @property
    def outbound_topic(self) -> str:
        return topics.outbound_topic(self.topic_prefix)

    @property
    def commands_topic(self) -> str:
        return topics.commands_topic(self.topic_prefix, self.node_id)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None
                  ) -> NodeConfig:
        v = resolve(args, NODE_SETTINGS, env)
        call = CallSettings(
            start_timeout_s=v.pop("start_timeout_s"),
            ending_timeout_s=v.pop("ending_timeout_s"),
            idle_timeout_s=v.pop("idle_timeout_s"),
            aggregate_ms=v.pop("aggregate_ms"),
            content_type=AudioContentType(v.pop("audio_content_type")),
            kill_audio_on_clear=v.pop("kill_audio_on_clear"),
            playout=PlayoutSettings(
                paced=v.pop("playout_paced"),
                clip_ms=v.pop("playout_clip_ms"),
                lead_ms=v.pop("playout_lead_ms"),
                max_queue_ms=v.pop("playout_max_queue_ms"),
            ),
        )
        if not v["kafka"].strip():
            raise SettingError("bad value for --kafka / KGW_KAFKA: empty")
        return cls(call=call, **v)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings(parser, NODE_SETTINGS)
