"""Every bound of a node, and the worst-case memory they add up to (pure: no I/O).

Two things live here so that the README, the deploy manifests and the code
cannot disagree:

- ``LIMITS`` and ``FIXED_LIMITS``: each bound, what happens beyond it and why its
  default is safe on both sides (above what a real provider sends, see
  PROTOCOL.md; below what would hurt the node). ``limits_table`` and
  ``fixed_limits_table`` render them for the README.
- ``per_call`` and ``per_node``: the most memory one call, and one node, can
  make the process hold, as named terms with the formula of each. The deploy
  manifests' memory limits are checked against ``per_node`` by
  ``tests/test_limits.py``.

The figures are upper bounds of what the *bounds* allow, whatever the peers
do: a hostile provider on every socket, a hostile bot on every call, Kafka
away. They are not what a node uses in practice (see bench/RESULTS.md).

Not in the formula: kernel socket buffers. cgroup v2 charges them to the
container, but the kernel bounds them (``net.ipv4.tcp_rmem``/``tcp_wmem``);
the base term's rounding is the headroom for them and for the allocator's
fragmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway import topics
from gateway.config import NODE_SETTINGS, NodeConfig
from gateway.core import commands, knowlarity
from gateway.kafka.outbox import RECORD_OVERHEAD_BYTES, Headers
from gateway.settings import Setting

KiB = 1024
MiB = 1024 * KiB

# The interpreter, its libraries and an idle node. Measured (CPython 3.11.7,
# Linux x86-64): ``.venv/bin/python -c "import gateway.node, gateway.kafka.bus,
# aiokafka, numpy, soxr, autobahn, twisted"`` then VmRSS from /proc/self/status:
# 75.9 MiB (three runs, 77688-77732 kB). bench/RESULTS.md reports an idle
# serving node at 83.2 MiB (85172 kB). Rounded up generously to 128 MiB: the
# rest covers the running reactor, asyncio loop, Kafka clients' metadata, the
# metrics registry, allocator fragmentation and kernel socket buffers.
BASE_BYTES = 128 * MiB

# Twisted's transport pauses its producer once it holds more than this
# (twisted.internet.abstract.FileDescriptor.bufferSize); the gateway counts
# what it writes after the pause against --max-write-buffer-bytes.
TWISTED_BUFFER_BYTES = 64 * KiB

# A live call's fixed cost: the Autobahn protocol, Twisted's TCP transport,
# the core's Call and Playout, timers, a soxr resampler once a bot plays at
# another rate. Measured: 11.6 KiB of RSS per started call (2000 calls, each
# a real ProviderProtocol on a fake transport, one 640-byte frame received;
# tracemalloc: 10.7 KiB of Python objects, a third of it Autobahn's). A real
# TCP transport and a resampler's state add a few KiB more; bench/RESULTS.md
# shows 90-130 KiB per call *including* audio in flight. Taken as 64 KiB.
CALL_OVERHEAD_BYTES = 64 * KiB

# A connection still in its HTTP upgrade: protocol and transport objects
# (beyond the request bytes themselves, counted separately).
HANDSHAKE_OVERHEAD_BYTES = 16 * KiB

# One marker waiting in a playout queue. Measured (tracemalloc): a Mark of 128
# characters is 269 bytes, a Transfer of 16 pairs of 128-character strings
# 6819 bytes. The playout holds at most one hang-up or transfer at a time (the
# call ends there), the rest are marks. The model rounds each up: a str costs
# its characters + 64, a pair + 64, the marker itself 256.
MARKER_BASE_BYTES = 256
STR_OVERHEAD_BYTES = 64
PAIR_OVERHEAD_BYTES = 64

# aiokafka's producer copies records into batches (gateway.kafka.bus: 256 KiB each);
# per partition one batch is being sent and one waits. The node's producer
# writes to the inbound and outbound topics, each with --inbound-partitions
# partitions when the node created them.
PRODUCER_BATCH_BYTES = 256 * KiB
BATCHES_PER_PARTITION = 2

# The command consumer reads one partition; aiokafka's max_partition_fetch_bytes
# (default 1 MiB, the gateway does not change it) bounds one fetch. Held up to
# three times: the fetched bytes, the decoded records, the command being parsed.
FETCH_BYTES = 1 * MiB
FETCH_COPIES = 3

# Caller audio is at most 48 kHz s16le (knowlarity.SAMPLE_RATES).
_MAX_CALL_RATE = max(knowlarity.SAMPLE_RATES)


@dataclass(frozen=True)
class Term:
    """One part of a worst case: ``bytes`` is the part's total (already times ``count``)."""

    name: str
    bytes: int
    formula: str


@dataclass(frozen=True)
class Estimate:
    terms: tuple[Term, ...]

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.terms)

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(name)

    def markdown_table(self) -> str:
        rows = ["| term | formula | bytes | MiB |", "|---|---|---:|---:|"]
        for t in self.terms:
            rows.append(f"| {t.name} | {t.formula} | {t.bytes:,} | {t.bytes / MiB:.1f} |")
        rows.append(f"| **total** | | **{self.total:,}** | **{self.total / MiB:.1f}** |")
        return "\n".join(rows)


def mark_bytes(c: NodeConfig) -> int:
    """The most one queued mark can hold."""
    return MARKER_BASE_BYTES + c.call.commands.max_name_chars + STR_OVERHEAD_BYTES


def transfer_bytes(c: NodeConfig) -> int:
    """The most one queued transfer can hold (at most one waits per call)."""
    lim = c.call.commands
    name = lim.max_name_chars + STR_OVERHEAD_BYTES
    return MARKER_BASE_BYTES + lim.max_transfer_params * (2 * name + PAIR_OVERHEAD_BYTES)


def socket_terms(c: NodeConfig) -> tuple[Term, ...]:
    """What one live provider socket can hold, whatever it and its bot do."""
    largest_frame = knowlarity.largest_play_frame_bytes(c.call.playout.clip_ms,
                                                       c.call.content_type)
    terms = [
        Term("receive", 2 * c.max_frame_bytes,
             "2 x max_frame_bytes (Autobahn's read buffer + the message assembled)"),
        Term("send", c.max_write_buffer_bytes + TWISTED_BUFFER_BYTES + largest_frame,
             "max_write_buffer_bytes + 64 KiB (Twisted's transport buffer) + the largest "
             f"playAudio frame ({largest_frame:,} bytes at playout_clip_ms, 48 kHz)"),
        Term("marks", c.call.playout.max_markers * mark_bytes(c) + transfer_bytes(c),
             f"max_marks x ({MARKER_BASE_BYTES} + max_name_chars + {STR_OVERHEAD_BYTES}) + one "
             f"transfer: {MARKER_BASE_BYTES} + max_transfer_params x (2 x (max_name_chars + "
             f"{STR_OVERHEAD_BYTES}) + {PAIR_OVERHEAD_BYTES})"),
        Term("call overhead", CALL_OVERHEAD_BYTES,
             "protocol, transport, call state, resampler (measured 11.6 KiB; taken as 64 KiB)"),
    ]
    if c.call.aggregate_ms:
        held = c.call.aggregate_ms * _MAX_CALL_RATE * 2 // 1000 + c.max_frame_bytes
        terms.append(Term("aggregation", held,
                          "aggregate_ms x 96 bytes (48 kHz s16le) + max_frame_bytes"))
    return tuple(terms)


def per_call(c: NodeConfig) -> Estimate:
    """The most one call can make its node hold: its socket, its bot audio, its buffer share."""
    return Estimate(socket_terms(c) + (
        Term("bot audio", c.call.playout.max_call_bytes, "playout_max_call_bytes"),
        Term("buffer share", c.buffer_call_share_bytes,
             f"buffer_call_share_bytes (each record charged {RECORD_OVERHEAD_BYTES} bytes "
             "beyond its value and headers)"),
    ))


def per_node(c: NodeConfig) -> Estimate:
    """The most a node can hold with every bound reached at once."""
    per_socket = sum(t.bytes for t in socket_terms(c))
    partitions = 2 * c.inbound_partitions
    batches = min(c.buffer_bytes, partitions * BATCHES_PER_PARTITION * PRODUCER_BATCH_BYTES)
    return Estimate((
        Term("base", BASE_BYTES,
             "interpreter, libraries, idle node (measured 76 MiB VmRSS; taken as 128 MiB)"),
        Term("record buffer", c.buffer_bytes,
             f"buffer_bytes: queued and in flight, each record charged {RECORD_OVERHEAD_BYTES} "
             "bytes beyond its value and headers"),
        Term("producer batches", batches,
             f"min(buffer_bytes, 2 x inbound_partitions x {BATCHES_PER_PARTITION} x 256 KiB): "
             "aiokafka's copies of records in flight"),
        Term("bot audio", min(c.playout_node_bytes, c.max_sockets * c.call.playout.max_call_bytes),
             "min(playout_node_bytes, max_sockets x playout_max_call_bytes)"),
        Term("sockets", c.max_sockets * per_socket,
             f"max_sockets x {per_socket:,} (receive + send + marks + call overhead"
             + (" + aggregation" if c.call.aggregate_ms else "") + ", per socket)"),
        Term("handshakes", c.max_awaiting_start * (c.max_request_bytes + HANDSHAKE_OVERHEAD_BYTES),
             "max_awaiting_start x (max_request_bytes + 16 KiB): connections accepted beyond "
             "max_sockets, still in their upgrade request"),
        Term("command fetch", FETCH_COPIES * FETCH_BYTES,
             f"{FETCH_COPIES} x 1 MiB (aiokafka max_partition_fetch_bytes, one partition)"),
    ))


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# --- the table of limits -------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    setting: str  # a NODE_SETTINGS name
    beyond: str  # what happens past it
    why: str  # why the default is safe on both sides


LIMITS: tuple[Limit, ...] = (
    Limit("max_frame_bytes",
          "close 1009",
          "mod_audio_fork sends what accumulated since its last write; after a stall of its "
          "whole buffer (1-5 s) that is up to 160,000 bytes at 16 kHz (5 s), and a start "
          "message is under 2 KB; 192 KiB is above both. Each socket may hold about twice "
          "this (see the memory formula)"),
    Limit("max_request_bytes",
          "HTTP 431, connection closed",
          "the provider's upgrade request is a request line and a handful of headers (well "
          "under 2 KB); 16 KiB is what common proxies allow. Autobahn would otherwise buffer "
          "and rescan an endless request"),
    Limit("max_sockets",
          "HTTP 503 at the handshake; at TCP accept, connections beyond max_sockets + "
          "max_awaiting_start are closed at once",
          "one socket per live call: size it to the calls a node should carry. The memory "
          "formula is linear in it; the deploy manifests derive their memory limits from it"),
    Limit("max_awaiting_start",
          "HTTP 503",
          "a real provider sends its start message at once, so few sockets wait at a time; "
          "50 is far above a burst of calls, and bounds what silent sockets hold"),
    Limit("start_timeout_s",
          "close 4000",
          "the start message is the provider's first frame, sent right after the upgrade"),
    Limit("idle_timeout_s",
          "call ended (IDLE_TIMEOUT), close 4003",
          "a live call sends audio every 20 ms, and mod_audio_fork pings an idle socket every "
          "20 s; 60 s of nothing at all is a dead peer"),
    Limit("ending_timeout_s",
          "call ended (ENDING_TIMEOUT), close 4001",
          "after asr_disconnect=true the provider hangs up within a second or two"),
    Limit("max_write_buffer_bytes",
          "call ended (PROTOCOL_ERROR), connection aborted, close 4004 in the ended record; "
          "kgw_sockets_not_reading",
          "paced playout keeps at most lead + one clip (~0.5 s, ~50 KB as wave) on the way; "
          "256 KiB is several seconds of that. Must exceed the largest playAudio frame (checked "
          "at start)"),
    Limit("max_frames_per_s",
          "close 1008",
          "20 ms frames are 50/s; after a stall mod_audio_fork sends fewer, larger frames. "
          "250/s sustained (burst frame_burst) is 5x real time in frames and bounds records "
          "per second"),
    Limit("frame_burst",
          "close 1008 (with max_frames_per_s)",
          "1000 frames is 20 s of 20 ms frames arriving at once after a stall, 4x the longest "
          "buffer mod_audio_fork keeps"),
    Limit("max_audio_speed",
          "close 1008",
          "a phone call produces audio at 1x; catching up after jitter is brief. 3x sustained "
          "(beyond audio_burst_s) is a flood"),
    Limit("audio_burst_s",
          "close 1008 (with max_audio_speed)",
          "mod_audio_fork buffers at most 5 s and sends it at once after a stall; 10 s is 2x "
          "that"),
    Limit("max_text_frames_per_s",
          "close 1008",
          "no text frame after the start message is documented; a few events per call are "
          "plausible, 20/s (burst 100) is not a phone call"),
    Limit("playout_max_call_bytes",
          "command_rejected (queue full); nothing of that play is queued",
          "2 MiB is 65 s of bot audio at 16 kHz queued ahead of the caller: more than any "
          "utterance, and a bot that streams TTS stays far below it (paced playout sends it as "
          "it plays)"),
    Limit("playout_node_bytes",
          "command_rejected (node budget exhausted)",
          "96 MiB is 48 calls each holding a full 2 MiB queue at once; typical bots hold well "
          "under a second per call. It caps the bot-audio term of the memory formula"),
    Limit("max_play_bytes",
          "command_rejected",
          "1 MiB is 32 s at 16 kHz, 10 s at 48 kHz, about Kafka's default message limit; "
          "stream longer audio as several commands"),
    Limit("max_marks",
          "command_rejected (too many markers)",
          "bots mark utterances, a handful at a time; 256 waiting in one call is far above "
          "that. At most one of them may be a hang-up or transfer (a second is rejected)"),
    Limit("max_name_chars",
          "command_rejected",
          "mark names, transfer keys and values, command ids are short identifiers "
          "(parameter1=default); 128 allows UUIDs and more, and keeps log lines and records "
          "small"),
    Limit("max_transfer_params",
          "command_rejected",
          "the documented transfer carries one parameter (parameter1=default); 16 is plenty"),
    Limit("max_play_ahead_ms",
          "command_rejected",
          "a timed play waits in the queue and holds what is behind it; a bot times audio "
          "the bus's latency ahead (tens of ms), an echo test its delay. 60 s bounds how long "
          "a careless time stalls a call's playout; its bytes count against the call's "
          "playout bound like any audio"),
    Limit("max_command_age_s",
          "command_rejected (stale), counted in kgw_commands_stale",
          "bots answer within a second; 30 s covers clock skew between hosts and a short "
          "broker hiccup, while a backlog after a long outage is not played to a caller "
          "who has moved on"),
    Limit("buffer_bytes",
          "oldest records dropped, counted (kgw_records_dropped) and reported as a dropped "
          "record per call",
          "about 6 s of a Kafka outage at 200 calls of 16 kHz audio (~56 KB/s each: 50 records "
          "a second of 640 audio bytes plus ~470 of framing, headers and objects); records in "
          "flight count too. Longer outages need a larger buffer and memory limit"),
    Limit("buffer_max_s",
          "oldest records dropped and reported, as for buffer_bytes",
          "10 minutes: records older than that are of little use to a live bot, and the "
          "bytes bound is usually reached first (see the outage table below)"),
    Limit("buffer_call_share_bytes",
          "that call's own oldest records dropped and reported (not another call's)",
          "4 MiB is about 2 minutes of one 16 kHz call's records: a real call never reaches it "
          "while others fit; a flooding call loses its own records"),
)


@dataclass(frozen=True)
class FixedLimit:
    what: str
    value: str
    beyond: str
    why: str


FIXED_LIMITS: tuple[FixedLimit, ...] = (
    FixedLimit("call id", f"1 to {knowlarity.MAX_CALL_ID_CHARS} characters of "
               f"{knowlarity.CALL_ID_CHARS}",
               "close 1007 before any record",
               "ids are Kafka keys and appear in every log line; provider ids are UUIDs with an "
               "optional suffix such as _0"),
    FixedLimit("start message", f"{knowlarity.MAX_START_BYTES:,} bytes "
               f"({knowlarity.MAX_START_BYTES // KiB} KiB) of UTF-8",
               "close 1009",
               "real start messages are well under 2 KB"),
    FixedLimit("start message as a Python literal",
               f"under {knowlarity.MAX_LITERAL_START_BYTES:,} bytes "
               f"({knowlarity.MAX_LITERAL_START_BYTES // KiB} KiB)",
               "close 1007",
               "ast.literal_eval costs over 100 ms on a 60 KB message; real ones are under 2 KB"),
    FixedLimit("mark names, transfer parameters, command ids", commands.SAFE_NAME_CHARS,
               "command_rejected",
               "no , or = (the transfer grammar), no space or control characters (log lines)"),
    FixedLimit("play sample rates", ", ".join(str(r) for r in sorted(commands.PLAY_SAMPLE_RATES)),
               "command_rejected",
               "every common TTS and telephony rate; an absurd ratio costs seconds of CPU"),
    FixedLimit("call sample rates", ", ".join(str(r) for r in sorted(knowlarity.SAMPLE_RATES)),
               "close 1007",
               "16000 documented, 8000 seen"),
)


def _setting(name: str, table: Sequence[Setting] = NODE_SETTINGS) -> Setting:
    for s in table:
        if s.name == name:
            return s
    raise KeyError(name)


def limits_table() -> str:
    rows = ["| setting | default | beyond it | why the default is safe |", "|---|---|---|---|"]
    for lim in LIMITS:
        s = _setting(lim.setting)
        rows.append(f"| `{s.flag}` / `{s.env}` | `{s.default}` | {lim.beyond} | {lim.why} |")
    return "\n".join(rows)


def fixed_limits_table() -> str:
    rows = ["| what | limit | beyond it | why |", "|---|---|---|---|"]
    for f in FIXED_LIMITS:
        rows.append(f"| {f.what} | {f.value} | {f.beyond} | {f.why} |")
    return "\n".join(rows)


# One record of 20 ms of 16 kHz caller (or bot) audio in the buffer: 640 audio
# bytes, ~70 bytes of protobuf framing and the outbox's per-record charge.
AUDIO_RECORD_BYTES = 640 + 70 + RECORD_OVERHEAD_BYTES


def call_buffer_bytes_per_s(c: NodeConfig, talking_bot: bool = False) -> int:
    """What one 16 kHz call costs the buffer per second while Kafka is away: 50 caller
    records, each with the call's headers (type, schema, reply topic, sample rate, node
    id); a silent bot adds nothing, a talking one its outbound audit records (type and
    schema headers only)."""
    headers = Headers(topics.call_headers(c.commands_topic, 16000, c.node_id)).nbytes
    outbound = Headers(topics.type_headers(topics.OUTBOUND_TYPE)).nbytes
    bot = 50 * (AUDIO_RECORD_BYTES + outbound) if talking_bot else 0
    return 50 * (AUDIO_RECORD_BYTES + headers) + bot


def outage_carried_s(c: NodeConfig, calls: int, talking_bots: bool = False) -> float:
    """How long an outage the buffer carries without a loss, at ``calls`` live calls."""
    rate = calls * call_buffer_bytes_per_s(c, talking_bots)
    by_bytes = c.buffer_bytes / rate
    return min(by_bytes, c.buffer_max_s) if c.buffer_max_s else by_bytes


def outage_table(c: NodeConfig | None = None, calls: Sequence[int] = (100, 300)) -> str:
    """The README's outage table, at ``c`` (default: the defaults)."""
    c = c or NodeConfig()
    rows = ["| live calls (16 kHz) | outage carried, bot silent | bot talking all the time |",
            "|---:|---:|---:|"]
    for n in calls:
        rows.append(f"| {n} | {outage_carried_s(c, n):.1f} s | "
                    f"{outage_carried_s(c, n, talking_bots=True):.1f} s |")
    return "\n".join(rows)


def memory_section(c: NodeConfig | None = None) -> str:
    """The README's memory tables, at ``c`` (default: the defaults)."""
    c = c or NodeConfig()
    call, node = per_call(c), per_node(c)
    return "\n".join([
        f"Per call, at the defaults: **{_mib(call.total)}**.",
        "",
        call.markdown_table(),
        "",
        f"Per node, at the defaults: **{_mib(node.total)}**.",
        "",
        node.markdown_table(),
    ])


__all__ = [
    "BASE_BYTES", "CALL_OVERHEAD_BYTES", "Estimate", "FIXED_LIMITS", "LIMITS", "Term",
    "fixed_limits_table", "limits_table", "memory_section", "per_call", "per_node",
]
