"""Translation between core values and the protobuf records on the bus.

The only module that imports generated ``*_pb2`` code. Times cross as
microseconds since the epoch: the core's times come from the node's clock,
which is monotonic in a running node, so encoders take ``wall_offset``, the
wall clock minus that clock at the moment of encoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from gateway.core import commands
from gateway.core import model as m
from gateway.core.commands import CommandLimits
from gateway.lease import rules as lease
from gateway.proto.knowlarity.gateway.v1 import command_pb2, inbound_pb2, nodes_pb2, outbound_pb2

_END_REASON = {r: inbound_pb2.EndReason.Value("END_REASON_" + r.name) for r in m.EndReason}
_END_REASON_BACK = {v: k for k, v in _END_REASON.items()}
_PLAYBACK = {k: inbound_pb2.PlaybackEventKind.Value("PLAYBACK_EVENT_KIND_" + k.name)
             for k in m.PlaybackKind}
_PLAYBACK_BACK = {v: k for k, v in _PLAYBACK.items()}
_DIRECTION = {d: inbound_pb2.CallDirection.Value("CALL_DIRECTION_" + d.name) for d in m.Direction}
_DIRECTION_BACK = {v: k for k, v in _DIRECTION.items()}
_CONTROL = {k: outbound_pb2.ControlKind.Value("CONTROL_KIND_" + k.name) for k in m.ControlKind}


class BadRecord(ValueError):
    """A record from the bus that cannot be understood; the caller counts and drops it."""


def us(t: float) -> int:
    # round, not int(): 1.000001 * 1e6 is 1000000.9999999999, which int() truncates.
    return round(t * 1_000_000)


def seconds(t_us: int) -> float:
    return t_us / 1_000_000


def _us_or_zero(t: float | None, wall_offset: float) -> int:
    """Optional times cross as 0 when absent (proto3 has no presence for scalars)."""
    return 0 if t is None else us(t + wall_offset)


# --- inbound -----------------------------------------------------------------


def inbound_to_proto(rec: m.Inbound, node_id: str,
                     wall_offset: float = 0.0) -> inbound_pb2.InboundRecord:
    out = inbound_pb2.InboundRecord(
        call_id=rec.call_id, node_id=node_id, time_unix_us=us(rec.at + wall_offset),
        record_seq=rec.record_seq,
    )
    body = rec.body
    if isinstance(body, m.CallerAudio):
        a = out.audio
        a.seq = body.seq
        a.media_position_samples = body.media_position_samples
        a.received_unix_us = us(body.received_at + wall_offset)
        a.pcm = body.pcm
        a.sample_rate = body.sample_rate
    elif isinstance(body, m.CallStarted):
        s = body.start
        out.started.CopyFrom(inbound_pb2.CallStarted(
            reply_topic=body.reply_topic,
            sample_rate=s.sample_rate,
            caller=s.caller,
            callee=s.callee,
            direction=_DIRECTION[s.direction],
            provider_campaign=s.provider_campaign,
            provider_fields_json=json.dumps(s.fields, separators=(",", ":"), default=str),
            raw_start_message=s.raw,
            request_path=body.request_path,
            start_message_shape=s.shape,
        ))
    elif isinstance(body, m.ProviderEvent):
        out.provider_event.text = body.text
        out.provider_event.received_unix_us = us(body.received_at + wall_offset)
    elif isinstance(body, m.PlaybackEvent):
        out.playback.CopyFrom(inbound_pb2.PlaybackEvent(
            kind=_PLAYBACK[body.kind], mark_name=body.mark_name,
            samples=body.samples, detail=body.detail, heard_ms=body.heard_ms,
        ))
    elif isinstance(body, m.CallEnded):
        out.ended.CopyFrom(inbound_pb2.CallEnded(
            reason=_END_REASON[body.reason], detail=body.detail, close_code=body.close_code,
            audio_chunks=body.audio_chunks, audio_samples=body.audio_samples,
            duration_ms=body.duration_ms, turns=body.turns,
            turn_latency_ms=list(body.turn_latency_ms),
        ))
    elif isinstance(body, m.RecordsDropped):
        out.dropped.CopyFrom(inbound_pb2.RecordsDropped(
            records=body.records, first_record_seq=body.first_record_seq,
            last_record_seq=body.last_record_seq, audio_chunks=body.audio_chunks,
            topic=body.topic,
        ))
    elif isinstance(body, m.CommandRejected):
        out.command_rejected.command_id = body.command_id
        out.command_rejected.reason = body.reason
    elif isinstance(body, m.CaptureWithheld):
        out.capture_withheld.CopyFrom(inbound_pb2.CaptureWithheld(
            first_media_position_samples=body.first_media_position_samples,
            samples=body.samples, frames=body.frames,
            first_received_unix_us=_us_or_zero(body.first_received_at, wall_offset),
            last_received_unix_us=_us_or_zero(body.last_received_at, wall_offset),
            paused_unix_us=us(body.paused_at + wall_offset),
        ))
    else:  # pragma: no cover - the union above is exhaustive
        raise TypeError(f"unknown inbound body {type(body).__name__}")
    return out


def encode_inbound(rec: m.Inbound, node_id: str, wall_offset: float = 0.0) -> bytes:
    return inbound_to_proto(rec, node_id, wall_offset).SerializeToString()


def decode_inbound(data: bytes) -> inbound_pb2.InboundRecord:
    """Bots read the protobuf directly; this only wraps the parse error."""
    rec = inbound_pb2.InboundRecord()
    try:
        rec.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, a bare Exception subclass
        raise BadRecord(f"undecodable inbound record: {e}") from e
    return rec


def end_reason(rec: inbound_pb2.InboundRecord) -> m.EndReason | None:
    return _END_REASON_BACK.get(rec.ended.reason)


def playback_kind(rec: inbound_pb2.InboundRecord) -> m.PlaybackKind | None:
    return _PLAYBACK_BACK.get(rec.playback.kind)


def direction(rec: inbound_pb2.InboundRecord) -> m.Direction:
    return _DIRECTION_BACK.get(rec.started.direction, m.Direction.UNSPECIFIED)


# --- commands ----------------------------------------------------------------


def command_to_proto(cmd: m.Command) -> command_pb2.Command:
    out = command_pb2.Command(call_id=cmd.call_id, command_id=cmd.command_id,
                              sent_unix_us=us(cmd.sent_at))
    body = cmd.body
    if isinstance(body, m.PlayAudio):
        out.play.pcm = body.pcm
        out.play.sample_rate = body.sample_rate
        out.play.uninterruptible = body.uninterruptible
        out.play.at_caller_ms = body.at_caller_ms
    elif isinstance(body, m.ClearAudio):
        out.clear.SetInParent()
    elif isinstance(body, m.Mark):
        out.mark.name = body.name
    elif isinstance(body, m.HangUp):
        out.hang_up.SetInParent()
    elif isinstance(body, m.Transfer):
        out.transfer.SetInParent()
        for k, v in body.parameters:
            out.transfer.parameters.add(key=k, value=v)
    elif isinstance(body, m.PauseCapture):
        out.pause_capture.SetInParent()
    elif isinstance(body, m.ResumeCapture):
        out.resume_capture.SetInParent()
    else:  # pragma: no cover - Refused never goes on the bus
        raise TypeError(f"unknown command body {type(body).__name__}")
    return out


def encode_command(cmd: m.Command) -> bytes:
    return command_to_proto(cmd).SerializeToString()


def decode_command(data: bytes, limits: CommandLimits | None = None) -> m.Command:
    """Parse and check a command from the bus.

    Raises BadRecord when there is no call to tell (undecodable, no call id);
    a command for a call that breaks a rule of ``gateway.core.commands`` comes
    back with a ``Refused`` body naming the rule.
    """
    limits = limits or CommandLimits()
    pb = command_pb2.Command()
    try:
        pb.ParseFromString(data)
    except Exception as e:
        raise BadRecord(f"undecodable command: {e}") from e
    if not pb.call_id:
        raise BadRecord("command without call_id")
    kind = pb.WhichOneof("body")
    body: m.CommandBody
    if kind == "play":
        body = m.PlayAudio(pcm=pb.play.pcm, sample_rate=pb.play.sample_rate,
                           uninterruptible=pb.play.uninterruptible,
                           at_caller_ms=pb.play.at_caller_ms)
    elif kind == "clear":
        body = m.ClearAudio()
    elif kind == "mark":
        body = m.Mark(name=pb.mark.name)
    elif kind == "hang_up":
        body = m.HangUp()
    elif kind == "transfer":
        body = m.Transfer(tuple((p.key, p.value) for p in pb.transfer.parameters))
    elif kind == "pause_capture":
        body = m.PauseCapture()
    elif kind == "resume_capture":
        body = m.ResumeCapture()
    else:
        body = m.Refused(f"command with no known body ({kind!r})")
    command_id = pb.command_id
    why = commands.check_command_id(command_id, limits)
    if why:
        command_id = ""
    else:
        why = commands.check(body, limits)
    if why:
        body = m.Refused(why)
    return m.Command(call_id=pb.call_id, body=body, command_id=command_id,
                     sent_at=seconds(pb.sent_unix_us))


# --- outbound audit ------------------------------------------------------------


def encode_outbound(rec: m.Outbound, node_id: str, wall_offset: float = 0.0) -> bytes:
    out = outbound_pb2.OutboundRecord(call_id=rec.call_id, node_id=node_id,
                                      sent_unix_us=us(rec.at + wall_offset))
    body = rec.body
    if isinstance(body, m.AudioSent):
        out.audio.pcm = body.pcm
        out.audio.sample_rate = body.sample_rate
        out.audio.media_position_samples = body.media_position_samples
    elif isinstance(body, m.ControlSent):
        out.control.kind = _CONTROL[body.kind]
        out.control.frame = body.frame
    else:
        out.dropped.records = body.records
        out.dropped.audio_clips = body.audio_clips
    return out.SerializeToString()


def decode_outbound(data: bytes) -> outbound_pb2.OutboundRecord:
    rec = outbound_pb2.OutboundRecord()
    try:
        rec.ParseFromString(data)
    except Exception as e:
        raise BadRecord(f"undecodable outbound record: {e}") from e
    return rec


# --- node leases (<prefix>.nodes; see gateway.lease.rules) -----------------------------


def _held_to_proto(calls: tuple[lease.HeldCall, ...]) -> list[nodes_pb2.HeldCall]:
    return [nodes_pb2.HeldCall(call_id=c.call_id, started_unix_us=c.started_unix_us,
                               ending=c.ending) for c in calls]


def _held_back(calls: Iterable[nodes_pb2.HeldCall]) -> tuple[lease.HeldCall, ...]:
    return tuple(lease.HeldCall(c.call_id, c.started_unix_us, c.ending) for c in calls)


def encode_node_record(rec: lease.NodeRecord) -> bytes:
    out = nodes_pb2.NodeRecord()
    if isinstance(rec, lease.Lease):
        out.lease.CopyFrom(nodes_pb2.Lease(
            node_id=rec.node_id, epoch=rec.epoch, seq=rec.seq, time_unix_us=rec.time_unix_us,
            lease_ms=rec.lease_ms, calls=_held_to_proto(rec.calls), closed=rec.closed))
    elif isinstance(rec, lease.Claim):
        out.claim.CopyFrom(nodes_pb2.Claim(
            node_id=rec.node_id, epoch=rec.epoch, claimer_id=rec.claimer_id,
            claimer_epoch=rec.claimer_epoch, calls=_held_to_proto(rec.calls),
            time_unix_us=rec.time_unix_us))
    else:
        out.settled.CopyFrom(nodes_pb2.Settled(
            node_id=rec.node_id, epoch=rec.epoch, claimer_id=rec.claimer_id,
            claimer_epoch=rec.claimer_epoch, ended_call_ids=list(rec.ended_call_ids),
            time_unix_us=rec.time_unix_us))
    return out.SerializeToString()


def decode_node_record(data: bytes) -> lease.NodeRecord:
    """Raises BadRecord for an undecodable record or one with no known body."""
    pb = nodes_pb2.NodeRecord()
    try:
        pb.ParseFromString(data)
    except Exception as e:
        raise BadRecord(f"undecodable node record: {e}") from e
    kind = pb.WhichOneof("body")
    if kind == "lease":
        x = pb.lease
        return lease.Lease(x.node_id, x.epoch, x.seq, x.time_unix_us, x.lease_ms,
                           _held_back(x.calls), x.closed)
    if kind == "claim":
        c = pb.claim
        return lease.Claim(c.node_id, c.epoch, c.claimer_id, c.claimer_epoch,
                           _held_back(c.calls), c.time_unix_us)
    if kind == "settled":
        s = pb.settled
        return lease.Settled(s.node_id, s.epoch, s.claimer_id, s.claimer_epoch,
                             tuple(s.ended_call_ids), s.time_unix_us)
    raise BadRecord(f"node record with no known body ({kind!r})")
