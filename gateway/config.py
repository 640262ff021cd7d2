"""The node's configuration: one frozen tree, from flags and environment."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway import topics
from gateway.core.call import CallSettings
from gateway.core.knowlarity import AudioContentType, largest_play_frame_bytes
from gateway.kafka_access import ACCESS_SETTINGS, AccessError, KafkaAccess, client_options
from gateway.settings import (
    DEFAULT_KAFKA,
    DEFAULT_TOPIC_PREFIX,
    KAFKA,
    LOG_FORMAT,
    LOG_FORMATS,
    LOG_LEVEL,
    TOPIC_PREFIX,
    Setting,
    SettingError,
    add_settings,
    boolean,
    build,
    choice,
    nested,
    non_negative,
    positive,
    resolve,
    with_defaults,
)
from gateway.workers.endpoints import TcpListen, port_of


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


COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


def _endpoint(text: str) -> str:
    """A Twisted server endpoint string, parsed now (an ssl: key file is read) so that a
    typo fails at start naming the setting, not when the node listens."""
    from twisted.internet.endpoints import serverFromString  # installs no reactor

    try:
        serverFromString(_NO_REACTOR, text)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ValueError(f"{text!r} is not a Twisted server endpoint: {e}") from None
    return text


# Parsing an endpoint string only stores the reactor; nothing is called on it.
_NO_REACTOR = object()


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    return int(positive(int)(text))

# Each setting once: flag and variable, help, parser, and where it goes in NodeConfig.
# Defaults come from the config classes themselves (None), except where the
# default is not a config value (the host name, a file to read).
_DECLARED: tuple[Setting, ...] = (
    Setting("listen", "KGW_LISTEN", None,
            "Twisted endpoint the provider connects to (e.g. tcp:8080, ssl:8443:privateKey=..., "
            "haproxy:tcp:8080 behind a PROXY-protocol load balancer)", _endpoint),
    KAFKA,
    *nested(ACCESS_SETTINGS, "kafka_access"),
    Setting("node_id", "KGW_NODE_ID", "",
            "this node's id (empty: the host name); names its commands topic, so keep it "
            "stable across restarts",
            _node_id),
    TOPIC_PREFIX,
    Setting("paths", "KGW_PATHS", None,
            "accepted WebSocket paths (any prefix allowed before them; a further last segment "
            "is taken as the call id)", _paths),
    Setting("auth_token", "KGW_AUTH_TOKEN", None,
            "if set, sockets must carry it as ?token= or 'Authorization: Bearer' (never logged)"),
    Setting("auth_token_file", "KGW_AUTH_TOKEN_FILE", "",
            "read the token from this file instead (trimmed); wins over --auth-token"),
    Setting("allow_from", "KGW_ALLOW_FROM", None,
            "if set, comma-separated CIDRs the provider may connect from (checked at TCP accept)",
            _networks),
    Setting("allow_unauthenticated", "KGW_ALLOW_UNAUTHENTICATED", None,
            "with neither a token nor --allow-from, accept sockets from any address (otherwise "
            "loopback only)", boolean),
    Setting("metrics_listen", "KGW_METRICS_LISTEN", None,
            "endpoint for /metrics, /healthz and /readyz; empty to disable",
            lambda text: _endpoint(text) if text.strip() else ""),
    Setting("max_frame_bytes", "KGW_MAX_FRAME_BYTES", None,
            "largest frame or message accepted from the provider (closed with 1009 above)",
            positive(int)),
    Setting("max_request_bytes", "KGW_MAX_REQUEST_BYTES", None,
            "largest HTTP upgrade request (request line and headers); 431 above", positive(int)),
    Setting("max_sockets", "KGW_MAX_SOCKETS", None,
            "most provider connections at once (handshaking or live); 503 or refused above",
            positive(int)),
    Setting("max_awaiting_start", "KGW_MAX_AWAITING_START", None,
            "most sockets still waiting for their start message; 503 above", positive(int)),
    Setting("max_write_buffer_bytes", "KGW_MAX_WRITE_BUFFER_BYTES", None,
            "bytes queued for a provider that stopped reading before its socket is closed (4004)",
            positive(int)),
    Setting("max_frames_per_s", "KGW_MAX_FRAMES_PER_S", None,
            "sustained binary frames per second from one socket (of any size, even empty); 1008 "
            "above", positive(_finite),
            path="call.max_frames_per_s"),
    Setting("frame_burst", "KGW_FRAME_BURST", None,
            "binary frames a socket may send above that rate in a burst", positive(int),
            path="call.frame_burst"),
    Setting("max_audio_speed", "KGW_MAX_AUDIO_SPEED", None,
            "caller audio faster than this multiple of real time, beyond the burst, is closed "
            "with 1008", positive(_finite),
            path="call.max_audio_speed"),
    Setting("audio_burst_s", "KGW_AUDIO_BURST_S", None,
            "seconds of caller audio a socket may send ahead of that speed (after a stall)",
            positive(_finite),
            path="call.audio_burst_allowance_s"),
    Setting("max_text_frames_per_s", "KGW_MAX_TEXT_FRAMES_PER_S", None,
            "sustained text frames per second after the start message (burst 100); 1008 above",
            positive(_finite),
            path="call.max_text_frames_per_s"),
    Setting("start_timeout_s", "KGW_START_TIMEOUT_S", None,
            "time the provider has to send the start message", positive(_finite),
            path="call.start_timeout_s"),
    Setting("ending_timeout_s", "KGW_ENDING_TIMEOUT_S", None,
            "time the provider has to close after a hang-up/transfer", positive(_finite),
            path="call.ending_timeout_s"),
    Setting("idle_timeout_s", "KGW_IDLE_TIMEOUT_S", None,
            "end a call after this long without any frame from the provider (0: never)",
            non_negative(_finite),
            path="call.idle_timeout_s"),
    Setting("aggregate_ms", "KGW_AGGREGATE_MS", None,
            "caller audio per inbound record (0: one record per frame); saves CPU, adds up to "
            "this much latency", non_negative(int),
            path="call.aggregate_ms"),
    Setting("audio_content_type", "KGW_AUDIO_CONTENT_TYPE", None,
            "playAudio encoding: wave (documented) or raw",
            lambda t: AudioContentType(choice("wave", "raw")(t)),
            path="call.content_type"),
    Setting("kill_audio_on_clear", "KGW_KILL_AUDIO_ON_CLEAR", None,
            "also send the undocumented killAudio frame on clear", boolean,
            path="call.kill_audio_on_clear"),
    Setting("playout_paced", "KGW_PLAYOUT_PACED", None,
            "hold bot audio and release it paced to real time (off: send at once)", boolean,
            path="call.playout.paced"),
    Setting("playout_clip_ms", "KGW_PLAYOUT_CLIP_MS", None,
            "largest clip of bot audio in one playAudio frame", positive(int),
            path="call.playout.clip_ms"),
    Setting("playout_lead_ms", "KGW_PLAYOUT_LEAD_MS", None,
            "how far ahead of real time bot audio is sent", non_negative(int),
            path="call.playout.lead_ms"),
    Setting("playout_max_call_bytes", "KGW_PLAYOUT_MAX_CALL_BYTES", None,
            "bot audio held per call, in bytes after conversion to the call's rate; a play "
            "beyond it is rejected", positive(int),
            path="call.playout.max_call_bytes"),
    Setting("playout_node_bytes", "KGW_PLAYOUT_NODE_BYTES", None,
            "bot audio held by all calls of the node together; a play beyond it is rejected",
            positive(int)),
    Setting("max_play_bytes", "KGW_MAX_PLAY_BYTES", None,
            "largest PCM payload of one play command", positive(int),
            path="call.commands.max_play_bytes"),
    Setting("max_marks", "KGW_MAX_MARKS", None,
            "marks, hang-ups and transfers waiting in one call's playout queue", positive(int),
            path="call.playout.max_markers"),
    Setting("max_name_chars", "KGW_MAX_NAME_CHARS", None,
            "longest mark name, transfer parameter key or value, command id", positive(int),
            path="call.commands.max_name_chars"),
    Setting("max_transfer_params", "KGW_MAX_TRANSFER_PARAMS", None,
            "most parameters in one transfer command", positive(int),
            path="call.commands.max_transfer_params"),
    Setting("max_play_ahead_ms", "KGW_MAX_PLAY_AHEAD_MS", None,
            "furthest a play may be timed (at_caller_ms) beyond the caller's stream so far",
            positive(int), path="call.commands.max_play_ahead_ms"),
    Setting("buffer_bytes", "KGW_BUFFER_BYTES", None,
            "records held while Kafka is unreachable (or in flight); beyond, oldest dropped and "
            "reported", positive(int)),
    Setting("buffer_max_s", "KGW_BUFFER_MAX_S", None,
            "oldest record the buffer keeps while Kafka is away, in seconds; older ones are "
            "dropped and reported (0: bytes only)", non_negative(_finite)),
    Setting("buffer_call_share_bytes", "KGW_BUFFER_CALL_SHARE_BYTES", None,
            "most of the buffer one call may hold; beyond, that call's own oldest records go "
            "first", positive(int)),
    Setting("linger_ms", "KGW_LINGER_MS", None,
            "producer linger: the longest a record waits for others to share its batch (all "
            "partitions leave on one shared tick, so half of it on average; each batch costs "
            "the node about 0.1 ms of CPU)", non_negative(int)),
    Setting("compression", "KGW_COMPRESSION", None,
            "Kafka compression of the node's records: " + ", ".join(COMPRESSIONS) + " (zstd: "
            "30 to 40 percent fewer broker bytes on speech for about 0.2 ms of CPU per "
            "call-second, as the benchmark measured)", choice(*COMPRESSIONS)),
    Setting("audio_retention_h", "KGW_AUDIO_RETENTION_H", None,
            "retention.ms, in hours, of the inbound, outbound and calls.started topics, set when "
            "the node creates them (what audit and replay can reach back to)",
            positive(_finite)),
    Setting("commands_retention_h", "KGW_COMMANDS_RETENTION_H", None,
            "retention.ms, in hours, of the node's commands topic, set when the node creates "
            "it (commands are read live only)", positive(_finite)),
    Setting("inbound_partitions", "KGW_INBOUND_PARTITIONS", None,
            "partitions when the node creates the inbound/outbound topics", positive(int)),
    Setting("replication_factor", "KGW_REPLICATION_FACTOR", None,
            "replication factor when the node creates topics", positive(int)),
    Setting("min_insync_replicas", "KGW_MIN_INSYNC_REPLICAS", None,
            "min.insync.replicas of the topics the node creates (2 with replication 3: a "
            "record is acknowledged once two brokers hold it)", positive(int)),
    Setting("max_command_age_s", "KGW_MAX_COMMAND_AGE_S", None,
            "commands sent longer ago than this (by their sent_unix_us) are rejected, not played "
            "late (0: no limit)", non_negative(_finite)),
    Setting("lease_s", "KGW_LEASE_S", None,
            "node lease on the nodes topic: heartbeats every third of it; a node silent this "
            "long (plus the margin) has its calls ended NODE_LOST by a peer", positive(_finite)),
    Setting("lease_margin_s", "KGW_LEASE_MARGIN_S", None,
            "extra time past an expired lease before a peer ends the node's calls",
            non_negative(_finite)),
    Setting("drain_timeout_s", "KGW_DRAIN_TIMEOUT_S", None,
            "on shutdown, how long live calls may go on before they are ended",
            non_negative(_finite)),
    Setting("workers", "KGW_WORKERS", None,
            "node processes sharing the --listen port (auto: one per CPU); above 1, a "
            "supervisor runs worker k (0 to N-1) as node id NODE_ID-k with metrics on the "
            "--metrics-listen port + k, restarts a worker that dies, and forwards SIGTERM "
            "(tcp: endpoints, Linux)", _workers),
    Setting("reuse_port", "KGW_REUSE_PORT", None,
            "bind the tcp: --listen port with SO_REUSEPORT, so that other processes can "
            "listen on it too (what --workers sets for each worker)", boolean),
    LOG_FORMAT,
    LOG_LEVEL,
)


@dataclass(frozen=True)
class NodeConfig:
    listen: str = "tcp:8080"
    kafka: str = DEFAULT_KAFKA
    kafka_access: KafkaAccess = KafkaAccess()
    node_id: str = "node"
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    paths: tuple[str, ...] = ("/vaani/knowlarity/setup-call-streams", "/knowlarity-stream")
    auth_token: str = ""
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_unauthenticated: bool = False
    metrics_listen: str = "tcp:9100"
    max_frame_bytes: int = 196608
    max_request_bytes: int = 16384
    max_sockets: int = 200
    max_awaiting_start: int = 50
    max_write_buffer_bytes: int = 262144
    playout_node_bytes: int = 96 * 1024 * 1024
    buffer_bytes: int = 64 * 1024 * 1024
    buffer_call_share_bytes: int = 4 * 1024 * 1024
    buffer_max_s: float = 600.0
    linger_ms: int = 10
    compression: str = "zstd"
    audio_retention_h: float = 7 * 24.0  # Kafka's own default
    commands_retention_h: float = 24.0
    inbound_partitions: int = 12
    replication_factor: int = 1
    min_insync_replicas: int = 1
    max_command_age_s: float = 30.0
    lease_s: float = 10.0
    lease_margin_s: float = 5.0
    drain_timeout_s: float = 30.0
    workers: int = 1
    reuse_port: bool = False
    log_format: str = LOG_FORMATS[0]
    log_level: str = "info"
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

    @property
    def nodes_topic(self) -> str:
        return topics.nodes_topic(self.topic_prefix)

    @property
    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Where sockets may come from: the allow-list; else, with no token and no
        --allow-unauthenticated, loopback only (protected mode, as Redis has); else anywhere."""
        if self.allow_from:
            return self.allow_from
        if self.auth_token or self.allow_unauthenticated:
            return ()
        return LOOPBACK

    @property
    def protected_mode(self) -> bool:
        return not (self.allow_from or self.auth_token or self.allow_unauthenticated)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None
                  ) -> NodeConfig:
        v = resolve(args, NODE_SETTINGS, env)
        token_file = v.pop("auth_token_file")
        if token_file:
            v["auth_token"] = _read_token(token_file)
        v["auth_token"] = v["auth_token"].strip()
        config: NodeConfig = build(cls(), v, NODE_SETTINGS)
        config.check()
        return config

    def check(self) -> None:
        """Settings that are fine alone but not together; fails naming them."""
        p = self.call.playout
        largest = largest_play_frame_bytes(p.clip_ms, self.call.content_type)
        if largest > self.max_write_buffer_bytes:
            raise SettingError(
                f"--playout-clip-ms {p.clip_ms} makes playAudio frames of up to {largest} bytes "
                f"(at 48 kHz), more than --max-write-buffer-bytes {self.max_write_buffer_bytes}: "
                "every clip would close the socket; lower the one or raise the other")
        try:
            client_options(self.kafka_access)  # the files exist and the combination works
        except AccessError as e:
            raise SettingError(str(e)) from None
        if self.buffer_call_share_bytes > self.buffer_bytes:
            raise SettingError(
                f"--buffer-call-share-bytes {self.buffer_call_share_bytes} is more than "
                f"--buffer-bytes {self.buffer_bytes}")
        if self.min_insync_replicas > self.replication_factor:
            raise SettingError(
                f"--min-insync-replicas {self.min_insync_replicas} is more than "
                f"--replication-factor {self.replication_factor}: no record could be written")
        if p.max_call_bytes > self.playout_node_bytes:
            raise SettingError(
                f"--playout-max-call-bytes {p.max_call_bytes} is more than "
                f"--playout-node-bytes {self.playout_node_bytes}")
        self._check_shared_port()

    def _check_shared_port(self) -> None:
        tcp = TcpListen.from_endpoint(self.listen) is not None
        if self.reuse_port and not tcp:
            raise SettingError(
                f"--reuse-port needs a tcp: or tcp6: --listen endpoint, not {self.listen!r}")
        if self.workers == 1:
            return
        if not tcp:
            raise SettingError(
                f"--workers {self.workers} needs a tcp: or tcp6: --listen endpoint (the workers "
                f"share its port with SO_REUSEPORT), not {self.listen!r}: run one process per "
                "TLS, PROXY-protocol or UNIX endpoint, or --workers 1")
        if not sys.platform.startswith("linux"):
            raise SettingError(f"--workers {self.workers} needs Linux (SO_REUSEPORT balancing); "
                               "run --workers 1")
        if self.metrics_listen:
            port = port_of(self.metrics_listen)
            if port is None:
                raise SettingError(
                    f"--workers {self.workers} gives worker k the --metrics-listen port + k; "
                    f"{self.metrics_listen!r} has no port (use tcp:PORT, or empty to disable)")
            if port and port + self.workers - 1 > 65535:
                raise SettingError(
                    f"--workers {self.workers} with --metrics-listen port {port}: worker ports "
                    "would pass 65535")


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

NODE_SETTINGS: tuple[Setting, ...] = with_defaults(_DECLARED, NodeConfig())


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise SettingError(
            f"bad value for --auth-token-file / KGW_AUTH_TOKEN_FILE: cannot read it "
            f"({e.strerror})") from None
    if not token:
        raise SettingError("bad value for --auth-token-file / KGW_AUTH_TOKEN_FILE: the file "
                           "is empty")
    return token


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings(parser, NODE_SETTINGS)
