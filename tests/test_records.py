"""Translation between core values and the protobuf records on the bus, both ways."""

from __future__ import annotations

import json

import pytest

from gateway import records
from gateway.core import model as m
from gateway.proto.knowlarity.gateway.v1 import command_pb2, inbound_pb2, outbound_pb2

NODE = "node-a"
AT = 1_700_000_000.25
AT_US = 1_700_000_000_250_000


def _round_trip(body: m.InboundBody, record_seq: int = 7) -> inbound_pb2.InboundRecord:
    rec = m.Inbound(call_id="call-1", record_seq=record_seq, at=AT, body=body)
    pb = records.decode_inbound(records.encode_inbound(rec, NODE))
    assert (pb.call_id, pb.node_id, pb.time_unix_us, pb.record_seq) == (
        "call-1", NODE, AT_US, record_seq)
    return pb


def _start(direction: m.Direction = m.Direction.OUTBOUND) -> m.CallStart:
    return m.CallStart(
        call_id="call-1", sample_rate=8000, caller="+911111", callee="+912222",
        direction=direction, provider_campaign="CMP-1",
        fields={"uuid": "call-1", "sample_rate": 8000, "extra": [1, "two", None],
                "metadata": {"call_type": "outbound", "nested": {"k": "v"}}},
        shape="json+metadata-urlencoded", raw='{"uuid": "call-1"}',
    )


@pytest.mark.parametrize(
    ("seconds", "micros"),
    [(0.0, 0), (0.000001, 1), (1.000001, 1_000_001), (2.675, 2_675_000), (AT, AT_US),
     (1_764_158_400.000001, 1_764_158_400_000_001)],
)
def test_times_cross_as_the_nearest_microsecond(seconds, micros):
    """Seconds become the nearest whole microsecond, and back."""
    assert records.us(seconds) == micros
    assert records.seconds(micros) == pytest.approx(seconds, abs=1e-7)


def test_call_started_carries_every_field():
    """CallStarted keeps the reply topic, the parsed start and every provider field as JSON."""
    pb = _round_trip(m.CallStarted(_start(), "knowlarity.calls.commands.node-a", "/x/y"), 0)
    assert pb.WhichOneof("body") == "started"
    s = pb.started
    assert (s.reply_topic, s.sample_rate, s.caller, s.callee, s.provider_campaign) == (
        "knowlarity.calls.commands.node-a", 8000, "+911111", "+912222", "CMP-1")
    assert s.direction == inbound_pb2.CALL_DIRECTION_OUTBOUND
    assert records.direction(pb) is m.Direction.OUTBOUND
    assert json.loads(s.provider_fields_json) == {
        "uuid": "call-1", "sample_rate": 8000, "extra": [1, "two", None],
        "metadata": {"call_type": "outbound", "nested": {"k": "v"}}}
    assert (s.raw_start_message, s.request_path, s.start_message_shape) == (
        '{"uuid": "call-1"}', "/x/y", "json+metadata-urlencoded")


@pytest.mark.parametrize(
    ("direction", "number"),
    [(m.Direction.UNSPECIFIED, 0), (m.Direction.INBOUND, 1), (m.Direction.OUTBOUND, 2)],
)
def test_directions_map_to_their_enum_numbers(direction, number):
    """Each call direction maps to its fixed enum number and back."""
    pb = _round_trip(m.CallStarted(_start(direction), "t", "/p"))
    assert pb.started.direction == number
    assert records.direction(pb) is direction


def test_caller_audio_carries_pcm_and_positions():
    """CallerAudio keeps seq, media position, receive time, PCM bytes and rate."""
    pcm = bytes(range(256)) * 5
    pb = _round_trip(m.CallerAudio(seq=41, media_position_samples=131_200,
                                   received_at=1.000001, pcm=pcm, sample_rate=16000))
    a = pb.audio
    assert (a.seq, a.media_position_samples, a.received_unix_us, a.pcm, a.sample_rate) == (
        41, 131_200, 1_000_001, pcm, 16000)


def test_provider_event_carries_the_text_as_received():
    """ProviderEvent keeps the text frame exactly and its receive time."""
    pb = _round_trip(m.ProviderEvent(text='{"dtmf":"#"} \u00e9', received_at=AT))
    assert (pb.provider_event.text, pb.provider_event.received_unix_us) == (
        '{"dtmf":"#"} \u00e9', AT_US)


@pytest.mark.parametrize(
    ("kind", "number"),
    [(m.PlaybackKind.MARK_REACHED, 1), (m.PlaybackKind.CLEARED, 2),
     (m.PlaybackKind.AUDIO_DROPPED, 3), (m.PlaybackKind.MARK_CLEARED, 4)],
)
def test_playback_events_keep_kind_mark_samples_and_detail(kind, number):
    """Every playback kind maps to its fixed enum number and back, with its fields."""
    pb = _round_trip(m.PlaybackEvent(kind, mark_name="m-1", samples=480, detail="why",
                                     heard_ms=1250))
    p = pb.playback
    assert (p.kind, p.mark_name, p.samples, p.detail, p.heard_ms) == (
        number, "m-1", 480, "why", 1250)
    assert records.playback_kind(pb) is kind


def test_every_playback_kind_is_covered():
    """The playback-kind table above names every kind the core has."""
    assert len(m.PlaybackKind) == 4


@pytest.mark.parametrize(
    ("first_at", "last_at", "first_us", "last_us"),
    [(1.000001, 2.5, 1_000_001, 2_500_000), (None, None, 0, 0)],
)
def test_capture_withheld_keeps_the_range_and_its_times(first_at, last_at, first_us, last_us):
    """CaptureWithheld keeps the withheld range, its frame count and times (0 when no frame
    was withheld)."""
    pb = _round_trip(m.CaptureWithheld(
        first_media_position_samples=96_000, samples=48_000, frames=150,
        first_received_at=first_at, last_received_at=last_at, paused_at=AT))
    assert pb.WhichOneof("body") == "capture_withheld"
    w = pb.capture_withheld
    assert (w.first_media_position_samples, w.samples, w.frames, w.first_received_unix_us,
            w.last_received_unix_us, w.paused_unix_us) == (
        96_000, 48_000, 150, first_us, last_us, AT_US)


def test_capture_withheld_times_are_on_the_wall_clock():
    """Like every time on the bus, the withheld range's times get the wall offset."""
    rec = m.Inbound("c", 0, 10.0, m.CaptureWithheld(0, 320, 1, 10.0, 10.0, 9.0))
    w = records.decode_inbound(records.encode_inbound(rec, NODE, wall_offset=100.0))
    assert (w.capture_withheld.first_received_unix_us, w.capture_withheld.paused_unix_us) == (
        110_000_000, 109_000_000)


@pytest.mark.parametrize(
    ("reason", "number"),
    [
        (m.EndReason.CALLER_HANGUP, 1), (m.EndReason.BOT_HANGUP, 2),
        (m.EndReason.TRANSFERRED, 3), (m.EndReason.ENDING_TIMEOUT, 5),
        (m.EndReason.PROTOCOL_ERROR, 6), (m.EndReason.NODE_SHUTDOWN, 7),
        (m.EndReason.REPLACED, 8), (m.EndReason.CONNECTION_LOST, 9),
        (m.EndReason.IDLE_TIMEOUT, 10), (m.EndReason.NODE_LOST, 11),
    ],
)
def test_call_ended_keeps_reason_and_totals(reason, number):
    """Every end reason maps to its fixed enum number (4 stays reserved) with the totals."""
    pb = _round_trip(m.CallEnded(reason, detail="d", close_code=4003, audio_chunks=12,
                                 audio_samples=3840, duration_ms=61_250))
    e = pb.ended
    assert (e.reason, e.detail, e.close_code, e.audio_chunks, e.audio_samples,
            e.duration_ms) == (number, "d", 4003, 12, 3840, 61_250)
    assert records.end_reason(pb) is reason


def test_every_end_reason_is_covered():
    """The end-reason table above names every reason the core has."""
    assert len(m.EndReason) == 10


def test_records_dropped_keeps_the_gap():
    """RecordsDropped keeps how many records were lost, their seq range, audio count and topic."""
    pb = _round_trip(m.RecordsDropped(records=5, first_record_seq=3, last_record_seq=9,
                                      audio_chunks=4, topic="knowlarity.calls.inbound"), 9)
    d = pb.dropped
    assert (d.records, d.first_record_seq, d.last_record_seq, d.audio_chunks, d.topic) == (
        5, 3, 9, 4, "knowlarity.calls.inbound")


def test_command_rejected_keeps_the_command_id_and_reason():
    """CommandRejected keeps the bot's command id and the reason."""
    pb = _round_trip(m.CommandRejected(command_id="cmd-9", reason="bad transfer"))
    assert pb.WhichOneof("body") == "command_rejected"
    assert (pb.command_rejected.command_id, pb.command_rejected.reason) == (
        "cmd-9", "bad transfer")


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"garbage", b"\x08"])
def test_undecodable_inbound_and_outbound_records_raise_bad_record(data):
    """Bytes that are not a record raise BadRecord, not protobuf's own error."""
    with pytest.raises(records.BadRecord):
        records.decode_inbound(data)
    with pytest.raises(records.BadRecord):
        records.decode_outbound(data)


# --- commands ----------------------------------------------------------------------------

COMMANDS = [
    m.PlayAudio(pcm=b"\x01\x02" * 100, sample_rate=8000),
    m.PlayAudio(pcm=b"", sample_rate=48000),
    m.PlayAudio(pcm=b"\x01\x02", sample_rate=16000, uninterruptible=True),
    m.PlayAudio(pcm=b"\x01\x02", sample_rate=16000, at_caller_ms=90_061_250),
    m.ClearAudio(),
    m.PauseCapture(),
    m.ResumeCapture(),
    m.Mark(name="after-greeting"),
    m.HangUp(),
    m.Transfer(parameters=(("parameter1", "default"),)),
    m.Transfer(parameters=(("z", "1"), ("a", "2"), ("m", ""))),
]


@pytest.mark.parametrize("body", COMMANDS, ids=lambda b: type(b).__name__)
def test_commands_round_trip_through_protobuf(body):
    """Every command body survives encode and decode unchanged, with id and send time."""
    cmd = m.Command(call_id="call-1", body=body, command_id="cmd-3", sent_at=AT)
    assert records.decode_command(records.encode_command(cmd)) == cmd


def test_a_play_without_the_flag_is_interruptible():
    """A PlayAudio written before the uninterruptible field existed decodes as interruptible."""
    assert records.decode_command(_pb_play(16000, b"\x00\x00")).body == m.PlayAudio(
        b"\x00\x00", 16000, uninterruptible=False)


@pytest.mark.parametrize(("field", "body"), [("pause_capture", m.PauseCapture()),
                                             ("resume_capture", m.ResumeCapture())])
def test_capture_commands_have_their_own_oneof_fields(field, body):
    """PauseCapture and ResumeCapture go on the wire as their own body fields, 15 and 16."""
    pb = command_pb2.Command.FromString(records.encode_command(m.Command("c", body)))
    assert pb.WhichOneof("body") == field
    assert command_pb2.Command.DESCRIPTOR.fields_by_name[field].number == (
        15 if field == "pause_capture" else 16)


def test_transfer_parameters_keep_their_order_on_the_wire():
    """Transfer parameters are written as repeated key/value pairs in the order given."""
    cmd = m.Command("c", m.Transfer((("z", "1"), ("a", "2"))))
    pb = command_pb2.Command.FromString(records.encode_command(cmd))
    assert [(p.key, p.value) for p in pb.transfer.parameters] == [("z", "1"), ("a", "2")]


def test_command_send_time_survives_a_round_trip_to_the_microsecond():
    """A command's sent_unix_us is the same after decoding and re-encoding."""
    pb = command_pb2.Command(call_id="c", sent_unix_us=1_000_001)
    pb.hang_up.SetInParent()
    again = command_pb2.Command.FromString(
        records.encode_command(records.decode_command(pb.SerializeToString())))
    assert again.sent_unix_us == 1_000_001


def _pb_command(**fields) -> bytes:
    pb = command_pb2.Command(**fields)
    return pb.SerializeToString()


def _play_without_rate() -> bytes:
    pb = command_pb2.Command(call_id="c")
    pb.play.pcm = b"\x00\x00"
    return pb.SerializeToString()


def _body_without_call_id() -> bytes:
    pb = command_pb2.Command(command_id="x")
    pb.hang_up.SetInParent()
    return pb.SerializeToString()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xff\xff", "undecodable"),
        (b"garbage", "undecodable"),
        (b"", "call_id"),
        (_body_without_call_id(), "call_id"),
    ],
)
def test_decode_command_rejects_unusable_records(data, why):
    """Garbage or a missing call id (no call to tell) raise BadRecord."""
    with pytest.raises(records.BadRecord, match=why):
        records.decode_command(data)


def _pb_play(rate: int, pcm: bytes) -> bytes:
    pb = command_pb2.Command(call_id="c", command_id="k")
    pb.play.pcm = pcm
    pb.play.sample_rate = rate
    return pb.SerializeToString()


def _pb_mark(name: str, command_id: str = "k") -> bytes:
    pb = command_pb2.Command(call_id="c", command_id=command_id)
    pb.mark.name = name
    return pb.SerializeToString()


@pytest.mark.parametrize(
    ("data", "why", "command_id"),
    [
        (_pb_command(call_id="c"), "no known body", ""),
        (_pb_command(call_id="c", command_id="x", sent_unix_us=5), "no known body", "x"),
        (_play_without_rate(), "sample_rate 0", ""),
        (_pb_play(4294967295, b"\x00\x00"), "sample_rate 4294967295", "k"),
        (_pb_play(16000, b"\x00" * 3), "odd number of bytes", "k"),
        (_pb_play(16000, b"\x00" * (1024 * 1024 + 2)), "1048576-byte limit", "k"),
        (_pb_mark("bad,name"), "characters outside", "k"),
        (_pb_mark("ok", command_id="x" * 200), "command_id has 200", ""),
        (_pb_mark("ok", command_id="new\nline"), "command_id", ""),
    ],
)
def test_decode_command_refuses_what_breaks_a_rule(data, why, command_id):
    """A command for a call that breaks a rule decodes to Refused, naming the rule, so the
    call can publish command_rejected; an unprintable command id is not echoed."""
    cmd = records.decode_command(data)
    assert isinstance(cmd.body, m.Refused)
    assert why in cmd.body.reason
    assert (cmd.call_id, cmd.command_id) == ("c", command_id)


# --- outbound audit -------------------------------------------------------------------------


def test_audio_sent_round_trips_through_protobuf():
    """AudioSent keeps the exact PCM, rate, media position and send time."""
    pcm = bytes(range(200))
    data = records.encode_outbound(
        m.Outbound("call-1", AT, m.AudioSent(pcm, 16000, 9600)), NODE)
    pb = records.decode_outbound(data)
    assert (pb.call_id, pb.node_id, pb.sent_unix_us) == ("call-1", NODE, AT_US)
    assert pb.WhichOneof("body") == "audio"
    assert (pb.audio.pcm, pb.audio.sample_rate, pb.audio.media_position_samples) == (
        pcm, 16000, 9600)


@pytest.mark.parametrize(
    ("kind", "number"),
    [(m.ControlKind.HANG_UP, 1), (m.ControlKind.TRANSFER, 2), (m.ControlKind.KILL_AUDIO, 3)],
)
def test_control_sent_round_trips_through_protobuf(kind, number):
    """ControlSent keeps its kind (fixed enum number) and the frame text as sent."""
    frame = '{"type":"playAudio","data":{"textContent":"asr_disconnect=true"}}'
    pb = records.decode_outbound(records.encode_outbound(
        m.Outbound("call-1", AT, m.ControlSent(kind, frame)), NODE))
    assert pb.WhichOneof("body") == "control"
    assert (pb.control.kind, pb.control.frame) == (number, frame)
    assert outbound_pb2.ControlKind.Name(number) == "CONTROL_KIND_" + kind.name


def test_outbound_loss_note_round_trips():
    """An OutboundDropped note becomes an OutboundRecord 'dropped' body with its counts."""
    pb = records.decode_outbound(records.encode_outbound(
        m.Outbound("c1", 2.5, m.OutboundDropped(records=7, audio_clips=5)), "n1"))
    assert pb.WhichOneof("body") == "dropped"
    assert (pb.call_id, pb.node_id, pb.sent_unix_us) == ("c1", "n1", 2_500_000)
    assert (pb.dropped.records, pb.dropped.audio_clips) == (7, 5)
