"""Inbound records (protobuf) into what a bot sees: the start, audio, events, the end.

The only SDK module that knows the envelopes; records it does not know (a
newer node) become None and are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway import records, topics
from gateway.proto.knowlarity.gateway.v1 import inbound_pb2
from gateway.sdk.call import (
    Audio,
    AudioDropped,
    CallEnd,
    CallInfo,
    CaptureWithheld,
    CommandRejected,
    Event,
    MarkOutcome,
    MarkResult,
    PlaybackCleared,
    ProviderText,
    RecordsLost,
)

_PB = inbound_pb2


def seconds(t_us: int) -> float:
    return t_us / 1e6


def info_from_started(rec: inbound_pb2.InboundRecord, *, joined_late: bool = False) -> CallInfo:
    st = rec.started
    try:
        fields: Any = json.loads(st.provider_fields_json) if st.provider_fields_json else {}
    except ValueError:
        fields = {}
    return CallInfo(
        call_id=rec.call_id, reply_topic=st.reply_topic, sample_rate=st.sample_rate,
        node_id=rec.node_id, caller=st.caller, callee=st.callee,
        direction=records.direction(rec).value, campaign=st.provider_campaign,
        provider_fields=fields if isinstance(fields, dict) else {},
        started_at=seconds(rec.time_unix_us), joined_late=joined_late)


def info_from_headers(call_id: str, headers: Mapping[str, bytes]) -> CallInfo | None:
    """What the headers every inbound record carries tell a late joiner; None without them."""
    try:
        reply = headers[topics.HEADER_REPLY_TOPIC].decode()
        rate = int(headers[topics.HEADER_SAMPLE_RATE])
        node = headers.get(topics.HEADER_NODE_ID, b"").decode()
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if not reply or rate <= 0:
        return None
    return CallInfo(call_id=call_id, reply_topic=reply, sample_rate=rate, node_id=node,
                    joined_late=True, start_known=False)


def audio(rec: inbound_pb2.InboundRecord, call_rate: int) -> Audio:
    a = rec.audio
    return Audio(pcm=a.pcm, seq=a.seq, position=a.media_position_samples,
                 sample_rate=a.sample_rate or call_rate, received_at=seconds(a.received_unix_us))


def end(rec: inbound_pb2.InboundRecord) -> CallEnd:
    e = rec.ended
    reason = records.end_reason(rec)
    return CallEnd(reason=reason.value if reason is not None else "unspecified", detail=e.detail,
                   close_code=e.close_code, duration_ms=e.duration_ms)


def event(rec: inbound_pb2.InboundRecord) -> Event | None:
    """The record as an event for ``Call.events()``; None for a kind this SDK does not know."""
    kind = rec.WhichOneof("body")
    if kind == "playback":
        return _playback(rec.playback)
    if kind == "provider_event":
        return ProviderText(rec.provider_event.text, seconds(rec.provider_event.received_unix_us))
    if kind == "command_rejected":
        return CommandRejected(rec.command_rejected.command_id, rec.command_rejected.reason)
    if kind == "dropped":
        d = rec.dropped
        return RecordsLost(d.records, d.first_record_seq, d.last_record_seq, d.audio_chunks)
    if kind == "capture_withheld":
        w = rec.capture_withheld
        return CaptureWithheld(w.first_media_position_samples, w.samples, w.frames,
                               seconds(w.first_received_unix_us), seconds(w.last_received_unix_us))
    return None


def _playback(p: inbound_pb2.PlaybackEvent) -> Event | None:
    k = _PB.PlaybackEventKind
    if p.kind == k.Value("PLAYBACK_EVENT_KIND_MARK_REACHED"):
        return MarkResult(p.mark_name, MarkOutcome.REACHED, p.heard_ms)
    if p.kind == k.Value("PLAYBACK_EVENT_KIND_MARK_CLEARED"):
        return MarkResult(p.mark_name, MarkOutcome.CLEARED, p.heard_ms)
    if p.kind == k.Value("PLAYBACK_EVENT_KIND_CLEARED"):
        return PlaybackCleared(p.samples)
    if p.kind == k.Value("PLAYBACK_EVENT_KIND_AUDIO_DROPPED"):
        return AudioDropped(p.samples, p.detail)
    return None
