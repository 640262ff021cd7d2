"""The per-call state machine, driven by hand: frames, commands and timers in, effects out.

Time is a float passed in; timers are driven by a small fake clock below that
fires each armed timer at the time it was armed for. Nothing here touches a
socket, a reactor or a broker.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.core import model as m
from gateway.core.call import (
    AGGREGATE_TIMER,
    ENDING_TIMER,
    IDLE_TIMER,
    PLAYOUT_TIMER,
    START_TIMER,
    Call,
    CallSettings,
    State,
)
from gateway.core.errors import CloseCode
from gateway.core.knowlarity import (
    AudioContentType,
    HangUpFrame,
    KillAudioFrame,
    PlayFrame,
    TransferFrame,
    decode_gateway_frame,
)
from gateway.core.playout import AudioBudget, PlayoutSettings

DATA = Path(__file__).parent / "data"
T0 = 1000.0
REPLY = "knowlarity.calls.commands.node-a"
PATH = "/vaani/knowlarity/setup-call-streams"
CALL_ID = "aosi-adfad-23-ad"  # the uuid in start_json.txt
ALL_TIMERS = [m.CancelTimer(t) for t in (START_TIMER, IDLE_TIMER, ENDING_TIMER, PLAYOUT_TIMER,
                                          AGGREGATE_TIMER)]
HANG_UP_FRAME = {
    "type": "playAudio",
    "data": {"audioContentType": "wave", "audioContent": "None",
             "textContent": "asr_disconnect=true"},
}


def _read(name: str) -> str:
    return (DATA / name).read_bytes().decode("utf-8")


def _pcm(samples: int, seed: int = 1) -> bytes:
    """Distinct, non-silent s16le samples so that any shift or reordering shows."""
    return b"".join(((i * 7919 + seed * 104729) % 65536).to_bytes(2, "little")
                    for i in range(samples))


def _new(settings: CallSettings | None = None, budget: AudioBudget | None = None) -> Call:
    return Call(settings or CallSettings(), provisional_id="path-id",
                reply_topic=REPLY, request_path=PATH, budget=budget)


def _started(settings: CallSettings | None = None, start: str = "start_json.txt",
             now: float = T0, budget: AudioBudget | None = None,
             call_id: str | None = None) -> Call:
    call = _new(settings, budget)
    call.opened(now - 0.5)
    text = _read(start)
    if call_id is not None:
        text = json.dumps({**json.loads(text), "uuid": call_id})
    call.on_text(text, now)
    assert call.state is State.ACTIVE
    return call


def _published(effects: list[m.Effect]) -> list[m.Inbound]:
    return [e.record for e in effects if isinstance(e, m.Publish)]


def _bodies(effects: list[m.Effect], kind: type) -> list:
    return [r.body for r in _published(effects) if isinstance(r.body, kind)]


def _ended(effects: list[m.Effect]) -> list[m.CallEnded]:
    return _bodies(effects, m.CallEnded)


def _closes(effects: list[m.Effect]) -> list[m.CloseSocket]:
    return [e for e in effects if isinstance(e, m.CloseSocket)]


def _texts(effects: list[m.Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, m.SendText)]


def _outbound(effects: list[m.Effect]) -> list[m.Outbound]:
    return [e.record for e in effects if isinstance(e, m.PublishOutbound)]


def _cmd(body: m.CommandBody, call_id: str = CALL_ID) -> m.Command:
    return m.Command(call_id=call_id, body=body)


class Clock:
    """Fires the call's timers at the times the call armed them for."""

    def __init__(self, call: Call, now: float) -> None:
        self.call = call
        self.now = now
        self.due: dict[str, float] = {}
        # (time, effect) for every effect seen, in order.
        self.log: list[tuple[float, m.Effect]] = []

    def apply(self, effects: list[m.Effect]) -> list[m.Effect]:
        for e in effects:
            self.log.append((self.now, e))
            if isinstance(e, m.SetTimer):
                assert e.delay >= 0
                self.due[e.name] = self.now + e.delay
            elif isinstance(e, m.CancelTimer):
                self.due.pop(e.name, None)
        return effects

    def run_until(self, t: float, only: tuple[str, ...] = (PLAYOUT_TIMER,)) -> None:
        """Fire the named timers, earliest first, until none is due at or before ``t``."""
        for _ in range(10_000):
            armed = [(at, name) for name, at in self.due.items() if name in only and at <= t]
            if not armed:
                self.now = max(self.now, t)
                return
            at, name = min(armed)
            del self.due[name]
            self.now = at
            self.apply(self.call.on_timer(name, at))
        raise AssertionError("timers kept firing: the call never settles")

    def effects(self) -> list[m.Effect]:
        return [e for _, e in self.log]

    def times_of(self, kind: type) -> list[float]:
        return [t for t, e in self.log if isinstance(e, kind)]


# --- opening and starting -------------------------------------------------------------


def test_opened_arms_the_start_timer():
    """Opening the socket arms the start timer for the configured timeout and nothing else."""
    call = _new(CallSettings(start_timeout_s=7.5))
    assert call.opened(T0) == [m.SetTimer(START_TIMER, 7.5)]
    assert call.state is State.AWAITING_START


def test_start_timeout_closes_with_4000_and_publishes_nothing():
    """No start message in time: every timer cancelled, close 4000, and no record at all."""
    call = _new()
    call.opened(T0)
    effects = call.on_timer(START_TIMER, T0 + 10)
    assert effects == ALL_TIMERS + [m.CloseSocket(4000, "no start message in time")]
    assert call.ended
    assert call.on_socket_closed(4000, True, T0 + 10.1) == []


@pytest.mark.parametrize(
    ("start", "call_id", "rate", "caller"),
    [
        ("start_json.txt", "aosi-adfad-23-ad", 16000, "+919876543210"),
        ("start_json_outbound_8000.txt", "f0e1d2c3-b4a5-4968-8776-655443322110_0", 8000,
         "+918047112233"),
        ("start_python_literal.txt", "b7e1c9d4-2f3a-4c5b-8d6e-9f0a1b2c3d4e", 8000,
         None),
        ("start_json_no_uuid.txt", "path-id", 16000, None),
    ],
)
def test_valid_start_publishes_call_started_and_swaps_start_timer_for_idle(
    start, call_id, rate, caller
):
    """A valid start cancels the start timer, publishes CallStarted as record 0, arms idle."""
    call = _new(CallSettings(idle_timeout_s=42.0))
    call.opened(T0 - 1)
    text = _read(start)
    effects = call.on_text(text, T0)
    assert effects[0] == m.CancelTimer(START_TIMER)
    assert effects[1] == m.CallIdentified(call_id)
    assert effects[3] == m.SetTimer(IDLE_TIMER, 42.0)
    assert len(effects) == 4
    (rec,) = _published(effects)
    assert (rec.call_id, rec.record_seq, rec.at) == (call_id, 0, T0)
    body = rec.body
    assert isinstance(body, m.CallStarted)
    assert (body.reply_topic, body.request_path) == (REPLY, PATH)
    assert body.start.sample_rate == rate
    assert body.start.raw == text
    if caller is not None:
        assert body.start.caller == caller
    assert (call.call_id, call.sample_rate, call.state) == (call_id, rate, State.ACTIVE)


def test_idle_timeout_zero_arms_no_idle_timer():
    """With the idle timeout off (0), a start arms no idle timer."""
    call = _new(CallSettings(idle_timeout_s=0))
    call.opened(T0)
    effects = call.on_text(_read("start_json.txt"), T0)
    assert not [e for e in effects if isinstance(e, m.SetTimer)]


def test_audio_before_start_closes_1003_without_records():
    """Binary audio before the start message closes with 1003 and publishes nothing."""
    call = _new()
    call.opened(T0)
    effects = call.on_binary(b"\x00" * 640, T0 + 0.1)
    assert effects == ALL_TIMERS + [m.CloseSocket(1003, "audio before the start message")]
    assert call.ended
    assert call.on_socket_closed(1003, True, T0 + 0.2) == []
    assert call.on_text(_read("start_json.txt"), T0 + 0.3) == []


@pytest.mark.parametrize(
    "name",
    [
        "bad_start_double_encoded_array.txt",
        "bad_start_empty.txt",
        "bad_start_not_object.txt",
        "bad_start_plain_text.txt",
        "bad_start_python_set.txt",
        "bad_start_sample_rate.txt",
        "bad_start_sample_rate_text.txt",
        "bad_start_truncated.txt",
    ],
)
def test_bad_start_closes_1007_without_records(name):
    """A start message the codec refuses closes the socket with 1007 and publishes nothing."""
    call = _new()
    call.opened(T0)
    effects = call.on_text(_read(name), T0 + 0.1)
    assert _published(effects) == []
    assert effects[:len(ALL_TIMERS)] == ALL_TIMERS
    (close,) = _closes(effects)
    assert close.code == 1007
    assert call.ended
    assert call.on_socket_closed(1007, True, T0 + 0.2) == []


def test_oversized_start_closes_with_the_codecs_1009():
    """A start message beyond the codec's size limit closes with the codec's code, 1009."""
    call = _new()
    call.opened(T0)
    effects = call.on_text('{"uuid": "' + "x" * 70_000 + '"}', T0)
    assert _published(effects) == []
    assert [c.code for c in _closes(effects)] == [1009]


def test_socket_closed_before_start_ends_quietly():
    """A socket that closes before any start message gets no records, only timers cancelled."""
    call = _new()
    call.opened(T0)
    assert call.on_socket_closed(1000, True, T0 + 1) == ALL_TIMERS
    assert call.ended and call.end_reason is None


# --- caller audio and provider events ---------------------------------------------------


def test_caller_audio_is_published_with_gap_free_seq_and_media_position():
    """Aligned frames become CallerAudio records with seq +1 and media position += samples."""
    call = _started()
    frames = [_pcm(320, 1), _pcm(160, 2), _pcm(480, 3)]
    recs = []
    for i, frame in enumerate(frames):
        recs += _published(call.on_binary(frame, T0 + 0.02 * (i + 1)))
    assert [r.record_seq for r in recs] == [1, 2, 3]
    assert [r.body.seq for r in recs] == [0, 1, 2]
    assert [r.body.media_position_samples for r in recs] == [0, 320, 480]
    assert [r.body.pcm for r in recs] == frames
    assert [r.body.sample_rate for r in recs] == [16000] * 3
    assert [r.body.received_at for r in recs] == [T0 + 0.02, T0 + 0.04, T0 + 0.06]
    assert [r.at for r in recs] == [T0 + 0.02, T0 + 0.04, T0 + 0.06]


@pytest.mark.parametrize(
    ("sizes", "chunk_bytes", "positions"),
    [
        ([641, 639], [640, 640], [0, 320]),
        ([641, 639, 641, 639], [640, 640, 640, 640], [0, 320, 640, 960]),
        ([1, 1], [2], [0]),
        ([3, 5], [2, 6], [0, 1]),
        ([641, 0, 639], [640, 640], [0, 320]),
        ([639, 2, 641], [638, 2, 642], [0, 319, 320]),
        ([7], [6], [0]),
    ],
)
def test_odd_byte_frames_are_carried_over_without_shifting_alignment(
    sizes, chunk_bytes, positions
):
    """Odd-length frames are re-aligned: chunks hold whole samples, in order, never shifted."""
    call = _started()
    stream = bytes((i * 37 + 11) % 256 for i in range(sum(sizes)))
    frames, at = [], 0
    for n in sizes:
        frames.append(stream[at:at + n])
        at += n
    chunks = []
    for i, frame in enumerate(frames):
        chunks += _bodies(call.on_binary(frame, T0 + 0.02 * (i + 1)), m.CallerAudio)
    assert [len(c.pcm) for c in chunks] == chunk_bytes
    assert [c.media_position_samples for c in chunks] == positions
    assert [c.seq for c in chunks] == list(range(len(chunk_bytes)))
    # Every byte sent arrives in order; only a trailing odd byte may still be held.
    joined = b"".join(c.pcm for c in chunks)
    assert joined == stream[:len(joined)]
    assert len(stream) - len(joined) == sum(sizes) % 2


def test_zero_length_frame_publishes_nothing():
    """A zero-length binary frame (end of the caller's stream) publishes no record."""
    call = _started()
    assert call.on_binary(b"", T0 + 1) == []
    (chunk,) = _bodies(call.on_binary(b"\x01\x02", T0 + 2), m.CallerAudio)
    assert (chunk.seq, chunk.media_position_samples) == (0, 0)


def test_text_after_start_is_a_provider_event():
    """A text frame after the start message is published as a ProviderEvent, as received."""
    call = _started()
    effects = call.on_text('{"event":"dtmf","digit":"5"}', T0 + 3)
    assert effects == [m.Publish(m.Inbound(CALL_ID, 1, T0 + 3, m.ProviderEvent(
        '{"event":"dtmf","digit":"5"}', T0 + 3)))]


# --- the end of a call ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "clean", "reason", "close_code"),
    [
        (1000, True, m.EndReason.CALLER_HANGUP, 1000),
        (None, True, m.EndReason.CALLER_HANGUP, 0),
        (1006, False, m.EndReason.CONNECTION_LOST, 1006),
        (None, False, m.EndReason.CONNECTION_LOST, 0),
    ],
)
def test_socket_close_after_start_ends_the_call_once(code, clean, reason, close_code):
    """The socket closing ends a started call with one CallEnded and no close of our own."""
    call = _started()
    call.on_binary(_pcm(320), T0 + 0.5)
    call.on_binary(_pcm(160), T0 + 1.0)
    effects = call.on_socket_closed(code, clean, T0 + 2.25)
    (ended,) = _ended(effects)
    assert ended == m.CallEnded(reason=reason, detail=ended.detail, close_code=close_code,
                                audio_chunks=2, audio_samples=480, duration_ms=2250)
    assert _closes(effects) == []
    assert effects[-len(ALL_TIMERS):] == ALL_TIMERS
    assert call.end_reason is reason
    assert _published(effects)[-1].record_seq == 3
    assert call.on_socket_closed(code, clean, T0 + 3) == []


def _hang_up(call: Call, now: float) -> list[m.Effect]:
    return call.on_command(_cmd(m.HangUp()), now)


def _flood_text(call: Call, now: float) -> list[m.Effect]:
    effects: list[m.Effect] = []
    for _ in range(200):
        effects += call.on_text("x", now)
    return effects


RACES = [
    ("end, then close", [
        lambda c, t: c.end(m.EndReason.NODE_SHUTDOWN, "shutdown", 1001, t),
        lambda c, t: c.on_socket_closed(1001, True, t),
    ], m.EndReason.NODE_SHUTDOWN),
    ("end twice", [
        lambda c, t: c.end(m.EndReason.NODE_SHUTDOWN, "shutdown", 1001, t),
        lambda c, t: c.end(m.EndReason.REPLACED, "replaced", 4002, t),
    ], m.EndReason.NODE_SHUTDOWN),
    ("close, then every timer", [
        lambda c, t: c.on_socket_closed(1000, True, t),
        lambda c, t: c.on_timer(IDLE_TIMER, t + 100),
        lambda c, t: c.on_timer(ENDING_TIMER, t + 100),
        lambda c, t: c.on_timer(START_TIMER, t + 100),
        lambda c, t: c.on_timer(PLAYOUT_TIMER, t + 100),
    ], m.EndReason.CALLER_HANGUP),
    ("close twice", [
        lambda c, t: c.on_socket_closed(1000, True, t),
        lambda c, t: c.on_socket_closed(None, False, t),
    ], m.EndReason.CALLER_HANGUP),
    ("protocol error, then close", [
        _flood_text,
        lambda c, t: c.on_socket_closed(1008, True, t),
    ], m.EndReason.PROTOCOL_ERROR),
    ("idle timeout, then close, then end", [
        lambda c, t: c.on_timer(IDLE_TIMER, t + 60),
        lambda c, t: c.on_socket_closed(4003, True, t + 60),
        lambda c, t: c.end(m.EndReason.NODE_SHUTDOWN, "shutdown", 1001, t + 61),
    ], m.EndReason.IDLE_TIMEOUT),
    ("hang-up, close, then ending timer", [
        _hang_up,
        lambda c, t: c.on_socket_closed(1000, True, t),
        lambda c, t: c.on_timer(ENDING_TIMER, t + 10),
    ], m.EndReason.BOT_HANGUP),
    ("hang-up, ending timer, then close", [
        _hang_up,
        lambda c, t: c.on_timer(ENDING_TIMER, t + 10),
        lambda c, t: c.on_socket_closed(4001, True, t + 10),
    ], m.EndReason.ENDING_TIMEOUT),
    ("hang-up, then end", [
        _hang_up,
        lambda c, t: c.end(m.EndReason.REPLACED, "replaced", 4002, t),
        lambda c, t: c.on_socket_closed(4002, True, t),
    ], m.EndReason.REPLACED),
    ("end, then frames and commands", [
        lambda c, t: c.end(m.EndReason.NODE_SHUTDOWN, "shutdown", 1001, t),
        lambda c, t: c.on_binary(b"\x00" * 640, t),
        lambda c, t: c.on_text("late", t),
        lambda c, t: c.on_command(_cmd(m.PlayAudio(b"\x00" * 640, 16000)), t),
        _hang_up,
        lambda c, t: c.on_socket_closed(1001, True, t),
    ], m.EndReason.NODE_SHUTDOWN),
]


@pytest.mark.parametrize(("steps", "reason"), [r[1:] for r in RACES], ids=[r[0] for r in RACES])
def test_racing_end_events_publish_exactly_one_call_ended(steps, reason):
    """However the end events race, a started call publishes exactly one CallEnded."""
    call = _started()
    effects: list[m.Effect] = []
    for step in steps:
        effects += step(call, T0 + 1)
    (ended,) = _ended(effects)
    assert ended.reason is reason
    # Nothing is published after the CallEnded.
    assert isinstance(_published(effects)[-1].body, m.CallEnded)
    assert call.ended


def test_record_seq_rises_by_one_across_every_record_of_a_call():
    """Every record of one call carries its call id and record_seq 0, 1, 2, ... with no gap."""
    settings = CallSettings(playout=PlayoutSettings(lead_ms=100, clip_ms=100))
    call = _new(settings)
    clock = Clock(call, T0)
    clock.apply(call.opened(T0))
    clock.apply(call.on_text(_read("start_json.txt"), T0))
    clock.apply(call.on_binary(_pcm(320), T0 + 0.02))
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(1601), 16000)), T0 + 0.03))
    clock.apply(call.on_command(_cmd(m.Mark("one")), T0 + 0.03))
    clock.apply(call.on_text("event", T0 + 0.04))
    clock.run_until(T0 + 0.05)
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 0.05))
    clock.apply(call.on_command(_cmd(m.ClearAudio()), T0 + 0.06))
    clock.apply(call.on_binary(_pcm(320), T0 + 0.07))
    clock.run_until(T0 + 5)
    clock.apply(call.on_socket_closed(1000, True, T0 + 6))
    recs = _published(clock.effects())
    # Mark "one" lost nothing to the clear (its audio was all sent): reached once played.
    assert [type(r.body) for r in recs] == [
        m.CallStarted, m.CallerAudio, m.ProviderEvent, m.PlaybackEvent,  # CLEARED
        m.CallerAudio, m.PlaybackEvent, m.CallEnded,  # audio, MARK_REACHED "one", end
    ]
    assert [r.record_seq for r in recs] == [0, 1, 2, 3, 4, 5, 6]
    assert {r.call_id for r in recs} == {CALL_ID}


# --- floods and idleness -----------------------------------------------------------------


def test_text_flood_ends_the_call_with_1008():
    """Text frames beyond the burst at one instant end the call: PROTOCOL_ERROR, close 1008."""
    call = _started(CallSettings(text_burst=100, max_text_frames_per_s=20.0))
    for i in range(100):
        (rec,) = _published(call.on_text(f"e{i}", T0 + 1))
        assert isinstance(rec.body, m.ProviderEvent)
    effects = call.on_text("one too many", T0 + 1)
    (ended,) = _ended(effects)
    assert (ended.reason, ended.close_code) == (m.EndReason.PROTOCOL_ERROR, 1008)
    assert [c.code for c in _closes(effects)] == [1008]
    assert _bodies(effects, m.ProviderEvent) == []


def test_text_tokens_refill_at_the_configured_rate():
    """After the burst is spent, one text frame per 1/rate seconds is allowed, not two."""
    call = _started(CallSettings(text_burst=2, max_text_frames_per_s=4.0))
    assert len(_bodies(call.on_text("a", T0 + 1), m.ProviderEvent)) == 1
    assert len(_bodies(call.on_text("b", T0 + 1), m.ProviderEvent)) == 1
    # 0.25 s at 4/s refills exactly one token.
    assert len(_bodies(call.on_text("c", T0 + 1.25), m.ProviderEvent)) == 1
    effects = call.on_text("d", T0 + 1.25)
    assert [e.reason for e in _ended(effects)] == [m.EndReason.PROTOCOL_ERROR]


def test_audio_flood_ends_the_call_with_1008():
    """Caller audio beyond speed x elapsed + allowance ends the call with 1008 after publishing."""
    call = _started(CallSettings(max_audio_speed=3.0, audio_burst_allowance_s=5.0))
    second = b"\x00\x01" * 16000
    # 10 s after the start, 3 x 10 + 5 = 35 s of audio is still allowed.
    for _ in range(35):
        effects = call.on_binary(second, T0 + 10)
        assert _ended(effects) == [] and _closes(effects) == []
    effects = call.on_binary(b"\x00\x01", T0 + 10)
    (chunk,) = _bodies(effects, m.CallerAudio)
    assert (chunk.seq, chunk.media_position_samples) == (35, 35 * 16000)
    (ended,) = _ended(effects)
    assert (ended.reason, ended.close_code) == (m.EndReason.PROTOCOL_ERROR, 1008)
    assert (ended.audio_chunks, ended.audio_samples) == (36, 35 * 16000 + 1)
    assert [c.code for c in _closes(effects)] == [1008]


def test_idle_timer_rearms_while_frames_arrive_and_ends_the_call_when_not():
    """The idle timer re-arms for the time left after a frame, and ends the call with 4003."""
    call = _started(CallSettings(idle_timeout_s=60.0))
    call.on_binary(_pcm(320), T0 + 30)
    assert call.on_timer(IDLE_TIMER, T0 + 60) == [m.SetTimer(IDLE_TIMER, 30.0)]
    call.on_text("still here", T0 + 75)
    assert call.on_timer(IDLE_TIMER, T0 + 90) == [m.SetTimer(IDLE_TIMER, 45.0)]
    effects = call.on_timer(IDLE_TIMER, T0 + 135)
    (ended,) = _ended(effects)
    assert (ended.reason, ended.close_code) == (m.EndReason.IDLE_TIMEOUT, 4003)
    assert [c.code for c in _closes(effects)] == [CloseCode.IDLE_TIMEOUT]
    assert call.end_reason is m.EndReason.IDLE_TIMEOUT


# --- bot audio -------------------------------------------------------------------------------


def _played(effects: list[m.Effect], rate: int) -> list[PlayFrame]:
    frames = [decode_gateway_frame(t, call_sample_rate=rate) for t in _texts(effects)]
    return [f for f in frames if isinstance(f, PlayFrame)]


def test_play_audio_paced_releases_lead_at_once_and_the_rest_on_playout_timers():
    """Paced bot audio leaves in 200 ms clips: two at once, then one per timer as lead allows."""
    settings = CallSettings(playout=PlayoutSettings(paced=True, clip_ms=200, lead_ms=300))
    call = _started(settings)
    clock = Clock(call, T0 + 1)
    pcm = _pcm(16000)
    first = clock.apply(call.on_command(_cmd(m.PlayAudio(pcm, 16000)), T0 + 1))
    assert len(_played(first, 16000)) == 2
    assert first[-1] == m.SetTimer(PLAYOUT_TIMER, pytest.approx(0.1))
    clock.run_until(T0 + 10)
    effects = clock.effects()
    frames = _played(effects, 16000)
    assert [len(f.pcm) for f in frames] == [6400] * 5
    assert b"".join(f.pcm for f in frames) == pcm
    assert {(f.sample_rate, f.content_type) for f in frames} == {(16000, AudioContentType.WAVE)}
    assert clock.times_of(m.SendText) == pytest.approx(
        [T0 + 1, T0 + 1, T0 + 1.1, T0 + 1.3, T0 + 1.5])
    sent = _outbound(effects)
    assert [(o.call_id, o.body.sample_rate) for o in sent] == [(CALL_ID, 16000)] * 5
    assert [o.body.pcm for o in sent] == [f.pcm for f in frames]
    assert [o.body.media_position_samples for o in sent] == [0, 3200, 6400, 9600, 12800]
    assert [o.at for o in sent] == pytest.approx(
        [T0 + 1, T0 + 1, T0 + 1.1, T0 + 1.3, T0 + 1.5])
    assert _published(effects) == []


def test_play_audio_unpaced_releases_everything_at_once():
    """Unpaced, all queued bot audio is sent in the command's own effects; no timer is armed."""
    call = _started(CallSettings(playout=PlayoutSettings(paced=False)))
    pcm = _pcm(32000, 3)
    effects = call.on_command(_cmd(m.PlayAudio(pcm, 16000)), T0 + 1)
    assert b"".join(f.pcm for f in _played(effects, 16000)) == pcm
    assert not [e for e in effects if isinstance(e, m.SetTimer)]
    sent = _outbound(effects)
    assert b"".join(o.body.pcm for o in sent) == pcm
    assert sent[0].body.media_position_samples == 0


def test_play_audio_raw_content_type_sends_raw_frames():
    """With content type raw, the same PCM goes out as raw playAudio frames."""
    settings = CallSettings(content_type=AudioContentType.RAW,
                            playout=PlayoutSettings(paced=False))
    call = _started(settings)
    pcm = _pcm(800)
    (frame,) = _played(call.on_command(_cmd(m.PlayAudio(pcm, 16000)), T0 + 1), 16000)
    assert (frame.pcm, frame.content_type) == (pcm, AudioContentType.RAW)


@pytest.mark.parametrize(
    ("start", "bot_rate", "bot_samples", "expected_samples"),
    [
        ("start_json.txt", 8000, 800, 1600),
        ("start_json_outbound_8000.txt", 16000, 1600, 800),
        ("start_json.txt", 48000, 4800, 1600),
    ],
)
def test_play_audio_at_another_rate_is_resampled_to_the_call_rate(
    start, bot_rate, bot_samples, expected_samples
):
    """Bot audio at another rate reaches the provider at the call's rate, length scaled."""
    call = _started(CallSettings(playout=PlayoutSettings(paced=False)), start=start)
    effects = call.on_command(_cmd(m.PlayAudio(_pcm(bot_samples), bot_rate)), T0 + 1)
    frames = _played(effects, call.sample_rate)
    assert {f.sample_rate for f in frames} == {call.sample_rate}
    total = sum(len(f.pcm) for f in frames) // 2
    assert abs(total - expected_samples) <= 2
    assert _published(effects) == []


def test_odd_length_play_audio_is_rejected_whole():
    """Odd-length bot PCM is refused with a command_rejected record; nothing is played."""
    call = _started(CallSettings(playout=PlayoutSettings(paced=False)))
    pcm = _pcm(320) + b"\x7f"
    effects = call.on_command(_cmd(m.PlayAudio(pcm, 16000)), T0 + 1)
    (rejected,) = _bodies(effects, m.CommandRejected)
    assert "odd" in rejected.reason
    assert _played(effects, 16000) == []


@pytest.mark.parametrize(
    ("plays", "refused"),
    [
        # max 3200 bytes = 100 ms at 16 kHz; lead 0 releases one 20 ms clip (320 samples) at once.
        ([1601], [1601]),
        ([1600], []),
        ([1600, 321], [321]),
        ([1600, 320], []),
    ],
)
def test_playout_queue_overflow_is_rejected(plays, refused):
    """Bot audio that would take the call past its byte bound is refused whole, with a record."""
    settings = CallSettings(playout=PlayoutSettings(clip_ms=20, lead_ms=0, max_call_bytes=3200))
    call = _started(settings)
    rejected = []
    for samples in plays:
        effects = call.on_command(_cmd(m.PlayAudio(_pcm(samples), 16000)), T0 + 1)
        rejected += [(samples, r.reason) for r in _bodies(effects, m.CommandRejected)]
    assert [n for n, _ in rejected] == refused
    assert all(why.startswith("playout queue full") for _, why in rejected)


def test_mark_is_reached_only_after_the_audio_before_it_has_played_out():
    """MARK_REACHED is published when the playout clock says the audio before it has ended."""
    call = _started()
    clock = Clock(call, T0 + 1)
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1))
    effects = clock.apply(call.on_command(_cmd(m.Mark("greeting-done")), T0 + 1))
    assert _bodies(effects, m.PlaybackEvent) == []
    clock.run_until(T0 + 1.99)
    assert _bodies(clock.effects(), m.PlaybackEvent) == []
    clock.run_until(T0 + 5)
    marks = [(t, e.record.body) for t, e in clock.log
             if isinstance(e, m.Publish) and isinstance(e.record.body, m.PlaybackEvent)]
    assert len(marks) == 1
    at, event = marks[0]
    assert (event.kind, event.mark_name, event.heard_ms) == (
        m.PlaybackKind.MARK_REACHED, "greeting-done", 1000)
    assert at == pytest.approx(T0 + 2.0)
    assert len(_played(clock.effects(), 16000)) == 5


def test_mark_with_nothing_queued_is_reached_at_once():
    """A mark on an idle playout is reached in the command's own effects."""
    call = _started()
    effects = call.on_command(_cmd(m.Mark("now")), T0 + 1)
    assert _bodies(effects, m.PlaybackEvent) == [
        m.PlaybackEvent(m.PlaybackKind.MARK_REACHED, mark_name="now")]


@pytest.mark.parametrize("kill_audio", [False, True])
def test_clear_drops_queued_audio_and_releases_pending_marks(kill_audio):
    """Clear reports CLEARED with the unsent samples, releases the marks whose audio it cut as
    MARK_CLEARED with what was heard, sends no more."""
    settings = CallSettings(kill_audio_on_clear=kill_audio,
                            playout=PlayoutSettings(clip_ms=200, lead_ms=300))
    call = _started(settings)
    clock = Clock(call, T0 + 1)
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.Mark("a")), T0 + 1))
    clock.apply(call.on_command(_cmd(m.Mark("b")), T0 + 1))
    effects = clock.apply(call.on_command(_cmd(m.ClearAudio()), T0 + 1.05))
    # Two 200 ms clips left at once (T0+1, playing until T0+1.4); 600 ms = 9600 samples
    # were still held. By T0+1.05, 50 ms of "a" had played; "b" had nothing of its own.
    assert _bodies(effects, m.PlaybackEvent) == [
        m.PlaybackEvent(m.PlaybackKind.CLEARED, samples=9600),
        m.PlaybackEvent(m.PlaybackKind.MARK_CLEARED, mark_name="a", heard_ms=50),
        m.PlaybackEvent(m.PlaybackKind.MARK_CLEARED, mark_name="b", heard_ms=0),
    ]
    if kill_audio:
        (text,) = _texts(effects)
        assert isinstance(decode_gateway_frame(text, call_sample_rate=16000), KillAudioFrame)
        (out,) = _outbound(effects)
        assert out.body == m.ControlSent(m.ControlKind.KILL_AUDIO, text)
    else:
        assert _texts(effects) == [] and _outbound(effects) == []
    clock.run_until(T0 + 10)
    assert len(_played(clock.effects(), 16000)) == 2


def test_hang_up_sends_the_documented_frame_and_enters_ending():
    """HangUp sends exactly the documented control frame, audits it, and waits in ENDING."""
    call = _started(CallSettings(ending_timeout_s=7.0))
    effects = call.on_command(_cmd(m.HangUp()), T0 + 1)
    (text,) = _texts(effects)
    assert json.loads(text) == HANG_UP_FRAME
    assert _outbound(effects) == [m.Outbound(CALL_ID, T0 + 1, m.ControlSent(
        m.ControlKind.HANG_UP, text))]
    assert m.SetTimer(ENDING_TIMER, 7.0) in effects
    assert m.CancelTimer(PLAYOUT_TIMER) in effects
    assert call.state is State.ENDING
    assert _ended(effects) == [] and _closes(effects) == []


def test_hang_up_waits_for_the_audio_queued_ahead_of_it():
    """A hang-up queued behind audio is sent only once that audio has played out."""
    call = _started()
    clock = Clock(call, T0 + 1)
    pcm = _pcm(8000)
    clock.apply(call.on_command(_cmd(m.PlayAudio(pcm, 16000)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.HangUp()), T0 + 1))
    assert call.state is State.ACTIVE
    clock.run_until(T0 + 5)
    texts = [(t, e.text) for t, e in clock.log if isinstance(e, m.SendText)]
    assert json.loads(texts[-1][1]) == HANG_UP_FRAME
    assert texts[-1][0] == pytest.approx(T0 + 1.5)
    assert b"".join(f.pcm for f in _played(clock.effects(), 16000)) == pcm
    assert call.state is State.ENDING


def test_clear_releases_a_queued_hang_up_at_once():
    """Clear drops the audio ahead of a queued hang-up, which is then sent immediately."""
    call = _started()
    call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1)
    call.on_command(_cmd(m.HangUp()), T0 + 1)
    effects = call.on_command(_cmd(m.ClearAudio()), T0 + 1.1)
    assert [json.loads(t) for t in _texts(effects)] == [HANG_UP_FRAME]
    assert call.state is State.ENDING


@pytest.mark.parametrize(
    ("parameters", "text_content"),
    [
        ((("parameter1", "default"),), "asr_disconnect=true,parameter1=default"),
        ((("parameter1", "default"), ("queue", "sales"), ("lang", "hi")),
         "asr_disconnect=true,parameter1=default,queue=sales,lang=hi"),
        ((("z", "1"), ("a", "2")), "asr_disconnect=true,z=1,a=2"),
    ],
)
def test_transfer_sends_its_parameters_in_order(parameters, text_content):
    """Transfer sends asr_disconnect=true followed by the bot's parameters in the order given."""
    call = _started()
    effects = call.on_command(_cmd(m.Transfer(parameters)), T0 + 1)
    (text,) = _texts(effects)
    assert json.loads(text) == {"type": "playAudio", "data": {
        "audioContentType": "wave", "audioContent": "None", "textContent": text_content}}
    assert decode_gateway_frame(text, call_sample_rate=16000) == TransferFrame(parameters)
    assert [o.body for o in _outbound(effects)] == [m.ControlSent(m.ControlKind.TRANSFER, text)]
    assert call.state is State.ENDING


@pytest.mark.parametrize("parameters", [(), (("", "x"),), (("a", "b,c"),), (("a=b", "c"),)])
def test_unsendable_transfer_is_rejected_up_front_and_playout_goes_on(parameters):
    """A transfer the codec cannot write is answered with CommandRejected; playout goes on."""
    call = _started()
    clock = Clock(call, T0 + 1)
    pcm = _pcm(16000)
    clock.apply(call.on_command(_cmd(m.PlayAudio(pcm, 16000)), T0 + 1))
    effects = clock.apply(call.on_command(
        m.Command(CALL_ID, m.Transfer(parameters), command_id="cmd-7"), T0 + 1))
    (rec,) = _published(effects)
    assert isinstance(rec.body, m.CommandRejected)
    assert (rec.record_seq, rec.body.command_id) == (1, "cmd-7")
    assert rec.body.reason
    assert _texts(effects) == []
    clock.run_until(T0 + 5)
    assert b"".join(f.pcm for f in _played(clock.effects(), 16000)) == pcm
    assert [json.loads(t)["data"].get("textContent") for t in _texts(clock.effects())] == [
        None] * 5
    assert call.state is State.ACTIVE


@pytest.mark.parametrize(
    ("body", "reason", "frame"),
    [
        (m.HangUp(), m.EndReason.BOT_HANGUP, HangUpFrame()),
        (m.Transfer((("parameter1", "default"),)), m.EndReason.TRANSFERRED,
         TransferFrame((("parameter1", "default"),))),
    ],
)
def test_provider_closing_after_hang_up_or_transfer_ends_with_that_reason(body, reason, frame):
    """The provider closing while ENDING ends the call as BOT_HANGUP or TRANSFERRED."""
    call = _started()
    effects = call.on_command(_cmd(body), T0 + 1)
    (text,) = _texts(effects)
    assert decode_gateway_frame(text, call_sample_rate=16000) == frame
    effects = call.on_socket_closed(1000, True, T0 + 1.5)
    (ended,) = _ended(effects)
    assert (ended.reason, ended.close_code, ended.duration_ms) == (reason, 1000, 1500)
    assert _closes(effects) == []
    assert effects[-len(ALL_TIMERS):] == ALL_TIMERS


@pytest.mark.parametrize("body", [m.HangUp(), m.Transfer((("parameter1", "default"),))])
def test_ending_timeout_ends_the_call_and_closes_with_4001(body):
    """If the provider does not close after a hang-up/transfer, ENDING_TIMEOUT and close 4001."""
    call = _started(CallSettings(ending_timeout_s=10.0))
    call.on_command(_cmd(body), T0 + 1)
    effects = call.on_timer(ENDING_TIMER, T0 + 11)
    (ended,) = _ended(effects)
    assert (ended.reason, ended.close_code) == (m.EndReason.ENDING_TIMEOUT, 4001)
    assert [c.code for c in _closes(effects)] == [4001]


def test_caller_audio_and_events_while_ending_are_still_published():
    """After a hang-up is sent, caller audio and provider events still reach the bus."""
    call = _started()
    call.on_command(_cmd(m.HangUp()), T0 + 1)
    assert len(_bodies(call.on_binary(_pcm(320), T0 + 1.1), m.CallerAudio)) == 1
    assert len(_bodies(call.on_text("bye", T0 + 1.2), m.ProviderEvent)) == 1


ALL_COMMANDS = [
    m.PlayAudio(b"\x00\x01" * 320, 16000),
    m.ClearAudio(),
    m.Mark("m"),
    m.HangUp(),
    m.Transfer((("parameter1", "default"),)),
]


@pytest.mark.parametrize("body", ALL_COMMANDS, ids=lambda b: type(b).__name__)
def test_commands_before_start_are_ignored(body):
    """A command for a call that has not started yet does nothing and raises nothing."""
    call = _new()
    call.opened(T0)
    assert call.on_command(_cmd(body, "path-id"), T0 + 0.1) == []
    assert call.state is State.AWAITING_START


@pytest.mark.parametrize("body", ALL_COMMANDS, ids=lambda b: type(b).__name__)
def test_commands_after_the_end_are_ignored(body):
    """A command for an ended call does nothing and raises nothing."""
    call = _started()
    call.on_socket_closed(1000, True, T0 + 1)
    assert call.on_command(_cmd(body), T0 + 2) == []


@pytest.mark.parametrize(
    ("body", "dropped"),
    [(ALL_COMMANDS[0], [320]), (ALL_COMMANDS[1], []), (ALL_COMMANDS[2], []),
     (ALL_COMMANDS[3], []), (ALL_COMMANDS[4], [])],
    ids=lambda b: type(b).__name__,
)
def test_commands_while_ending_are_ignored_and_audio_is_reported(body, dropped):
    """While ENDING, bot audio is reported as dropped and other commands do nothing."""
    call = _started()
    call.on_command(_cmd(m.HangUp()), T0 + 1)
    effects = call.on_command(_cmd(body), T0 + 2)
    events = _bodies(effects, m.PlaybackEvent)
    assert [(e.kind, e.samples) for e in events] == [
        (m.PlaybackKind.AUDIO_DROPPED, n) for n in dropped]
    assert _texts(effects) == [] and call.state is State.ENDING


def test_node_shutdown_ends_the_call_and_closes_with_1001():
    """end(NODE_SHUTDOWN, ..., 1001) publishes CallEnded(NODE_SHUTDOWN) and closes with 1001."""
    call = _started()
    effects = call.end(m.EndReason.NODE_SHUTDOWN, "node shutting down", 1001, T0 + 4)
    (ended,) = _ended(effects)
    assert ended == m.CallEnded(m.EndReason.NODE_SHUTDOWN, "node shutting down", 1001,
                                audio_chunks=0, audio_samples=0, duration_ms=4000)
    assert effects[-len(ALL_TIMERS) - 1:] == ALL_TIMERS + [
        m.CloseSocket(1001, "node shutting down")]


def test_end_before_start_closes_without_records():
    """Ending a socket that never started closes it with the given code and publishes nothing."""
    call = _new()
    call.opened(T0)
    effects = call.end(m.EndReason.NODE_SHUTDOWN, "node shutting down", 1001, T0 + 1)
    assert effects == ALL_TIMERS + [m.CloseSocket(1001, "node shutting down")]


def test_audio_still_queued_at_the_end_is_reported_before_call_ended():
    """Bot audio never sent when the call ends is reported as AUDIO_DROPPED before CallEnded."""
    call = _started()
    call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1)
    effects = call.on_socket_closed(1000, True, T0 + 1.05)
    recs = _published(effects)
    assert [type(r.body) for r in recs] == [m.PlaybackEvent, m.CallEnded]
    assert (recs[0].body.kind, recs[0].body.samples) == (m.PlaybackKind.AUDIO_DROPPED, 9600)


def test_settings_are_frozen():
    """CallSettings is a frozen value: replace() makes a new one, assignment fails."""
    s = CallSettings()
    assert replace(s, idle_timeout_s=1.0).idle_timeout_s == 1.0
    with pytest.raises(AttributeError):
        s.idle_timeout_s = 1.0  # type: ignore[misc]


def test_call_ended_duration_is_never_negative_when_the_clock_steps_back():
    """A wall clock stepped back during the call gives duration 0, not a value the bus refuses."""
    call = _started()
    (ended,) = _ended(call.on_socket_closed(1000, True, T0 - 3))
    assert ended.duration_ms == 0


def test_audio_that_cannot_fit_is_refused_before_it_is_resampled(monkeypatch):
    """Bot audio whose converted size exceeds the call's bound is refused without any work."""
    import gateway.core.playout as playout_module

    def no_conversion(*args: object) -> None:
        raise AssertionError("built a converter for audio that cannot fit")

    monkeypatch.setattr(playout_module, "Converter", no_conversion)
    # 1 s at 8 kHz becomes 32 000 bytes at 16 kHz: one byte over a 31 999-byte bound.
    call = _started(CallSettings(playout=PlayoutSettings(max_call_bytes=31_999)))
    effects = call.on_command(_cmd(m.PlayAudio(_pcm(8000), 8000)), T0 + 1)
    (rejected,) = _bodies(effects, m.CommandRejected)
    assert rejected.reason.startswith("playout queue full")
    assert _texts(effects) == []


# (what the bot sends, the words the rejection must hold)
REFUSED_COMMANDS = [
    (m.PlayAudio(b"\x00\x00" * 120, 0), "sample_rate 0 is not one of"),
    (m.PlayAudio(b"\x00\x00" * 120, 1), "sample_rate 1 is not one of"),
    (m.PlayAudio(b"\x00\x00" * 120, 4294967295), "sample_rate 4294967295"),
    (m.PlayAudio(b"\x00" * 3, 16000), "odd number of bytes"),
    (m.PlayAudio(b"\x00" * (1024 * 1024 + 2), 16000), "exceeds the 1048576-byte limit"),
    (m.Mark(""), "mark name is empty"),
    (m.Mark("a" * 129), "129 characters"),
    (m.Mark("two words"), "characters outside"),
    (m.Mark("line\nforged"), "characters outside"),
    (m.Mark("a,b"), "characters outside"),
    (m.Transfer(()), "at least one parameter"),
    (m.Transfer((("k", "v"),) * 17), "17 parameters"),
    (m.Transfer((("k=x", "v"),)), "characters outside"),
    (m.Transfer((("k", "a,b"),)), "characters outside"),
    (m.Transfer((("", "v"),)), "key is empty"),
    (m.Transfer((("k", "v" * 129),)), "129 characters"),
    (m.Refused("decoded badly"), "decoded badly"),
]


@pytest.mark.parametrize(("body", "words"), REFUSED_COMMANDS,
                         ids=[f"{type(b).__name__}-{w}" for b, w in REFUSED_COMMANDS])
def test_bad_commands_are_rejected_with_a_reason_and_do_nothing(body, words):
    """A command that breaks a rule gets one command_rejected record naming it, and no frame."""
    call = _started(CallSettings(playout=PlayoutSettings(paced=False)))
    effects = call.on_command(_cmd(body), T0 + 1)
    (rejected,) = _bodies(effects, m.CommandRejected)
    assert words in rejected.reason
    assert [e for e in effects if not isinstance(e, m.Publish)] == []
    assert call.state is State.ACTIVE


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000])
def test_every_supported_play_rate_is_played(rate):
    """Bot audio at each supported rate is converted and played, about its length in time."""
    call = _started(CallSettings(playout=PlayoutSettings(paced=False)))
    effects = call.on_command(_cmd(m.PlayAudio(_pcm(rate // 10), rate)), T0 + 1)
    assert _bodies(effects, m.CommandRejected) == []
    played = sum(len(f.pcm) for f in _played(effects, 16000)) // 2
    assert abs(played - 1600) <= 2


def test_node_budget_refuses_plays_once_spent_and_frees_it_when_calls_end():
    """Calls share the node's audio budget: a play past it is rejected; an ended call gives
    its share back."""
    budget = AudioBudget(40_000)
    a, b = (_started(CallSettings(), budget=budget, call_id=i) for i in ("a", "b"))
    # 1 s each (32 000 bytes); paced, a's first 400 ms leave at once and free their share.
    assert _bodies(a.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1),
                   m.CommandRejected) == []
    assert budget.used == 32_000 - 2 * 6400
    (rejected,) = _bodies(b.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1),
                          m.CommandRejected)
    assert rejected.reason.startswith("node playout budget exhausted")
    a.on_socket_closed(1000, True, T0 + 2)
    assert budget.used == 0
    assert _bodies(b.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 3),
                   m.CommandRejected) == []
    b.on_socket_closed(1000, True, T0 + 4)
    assert budget.used == 0


def test_marks_beyond_the_bound_are_rejected_and_clear_releases_only_those_queued():
    """Marks past max_markers are rejected; a clear then releases exactly the queued ones."""
    call = _started(CallSettings(playout=PlayoutSettings(max_markers=4)))
    call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1)
    rejected = []
    for i in range(10):
        rejected += _bodies(call.on_command(_cmd(m.Mark(f"m{i}")), T0 + 1), m.CommandRejected)
    assert len(rejected) == 6
    effects = call.on_command(_cmd(m.ClearAudio()), T0 + 1)
    assert [e.kind for e in _bodies(effects, m.PlaybackEvent)] == (
        [m.PlaybackKind.CLEARED] + [m.PlaybackKind.MARK_CLEARED] * 4)


def test_binary_frame_flood_counts_empty_frames_and_closes_with_1008():
    """Zero-length frames count against the frame rate: past the burst the call ends with 1008."""
    call = _started(CallSettings(max_frames_per_s=50, frame_burst=20))
    ended = []
    for i in range(100):
        effects = call.on_binary(b"", T0 + 1 + i * 0.0001)
        ended += _bodies(effects, m.CallEnded)
    (end,) = ended
    assert (end.reason, end.close_code) == (m.EndReason.PROTOCOL_ERROR, 1008)
    assert "frame flood" in end.detail


def test_frames_at_a_real_providers_pace_are_never_a_flood():
    """Fifty 20 ms frames a second for a minute, with a 5 s stall sent at once, pass."""
    call = _started()
    t = T0 + 1
    for i in range(3000):
        if 1000 <= i < 1250:
            # A 5 s stall: those frames arrive together when the network recovers.
            t_frame = T0 + 1 + 1250 * 0.02
        else:
            t_frame = T0 + 1 + i * 0.02
        t = max(t, t_frame)
        assert _bodies(call.on_binary(_pcm(320), t), m.CallEnded) == []


# --- aggregation of caller audio ------------------------------------------------------


def test_aggregation_publishes_one_record_per_interval_with_the_first_frames_time():
    """With aggregate_ms 60, three 20 ms frames become one record stamped with the first
    frame's receive time, and the bytes are the frames joined in order."""
    call = _started(CallSettings(aggregate_ms=60))
    frames = [_pcm(320, seed) for seed in (1, 2, 3, 4)]
    effects = []
    for i, f in enumerate(frames):
        effects += call.on_binary(f, T0 + 1 + i * 0.02)
    (first,) = _bodies(effects, m.CallerAudio)
    assert first.pcm == frames[0] + frames[1] + frames[2]
    assert (first.seq, first.media_position_samples, first.received_at) == (0, 0, T0 + 1)
    assert [e for e in effects if isinstance(e, m.SetTimer) and e.name == AGGREGATE_TIMER] == [
        m.SetTimer(AGGREGATE_TIMER, 0.09), m.SetTimer(AGGREGATE_TIMER, 0.09)]
    # The fourth frame is held until the timer fires (the caller's stream paused).
    (second,) = _bodies(call.on_timer(AGGREGATE_TIMER, T0 + 1.2), m.CallerAudio)
    assert (second.pcm, second.seq, second.media_position_samples, second.received_at) == (
        frames[3], 1, 960, T0 + 1.06)


def test_aggregated_audio_is_flushed_before_the_call_ends():
    """Audio held for aggregation is published before the CallEnded, and counted in it."""
    call = _started(CallSettings(aggregate_ms=100))
    call.on_binary(_pcm(320), T0 + 1)
    effects = call.on_socket_closed(1000, True, T0 + 1.01)
    kinds = [type(r.body) for r in _published(effects)]
    assert kinds == [m.CallerAudio, m.CallEnded]
    assert _ended(effects)[0].audio_samples == 320


def test_aggregation_flushes_on_a_zero_length_frame():
    """A zero-length frame (the caller's end of stream) publishes what is held at once."""
    call = _started(CallSettings(aggregate_ms=100))
    call.on_binary(_pcm(320), T0 + 1)
    (chunk,) = _bodies(call.on_binary(b"", T0 + 1.02), m.CallerAudio)
    assert chunk.pcm == _pcm(320)


def test_audio_behind_a_hang_up_is_reported_dropped_not_lost():
    """Audio queued after a hang-up, released by the same pump, is counted in AUDIO_DROPPED."""
    call = _started()
    clock = Clock(call, T0 + 1)
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(1600), 16000)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.HangUp()), T0 + 1))
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(16000), 16000)), T0 + 1))
    clock.run_until(T0 + 3)
    sent = sum(len(f.pcm) // 2 for f in _played(clock.effects(), 16000))
    dropped = sum(e.record.body.samples for _, e in clock.log
                  if isinstance(e, m.Publish) and isinstance(e.record.body, m.PlaybackEvent)
                  and e.record.body.kind is m.PlaybackKind.AUDIO_DROPPED)
    assert sent + dropped == 1600 + 16000
    assert sent == 1600


def test_a_timed_play_leaves_when_the_caller_s_stream_reaches_its_point():
    """``at_caller_ms`` counts from where the caller's sample 0 fell, pinned by the least
    delayed frame (a late frame does not move it); the play is sent at that point."""
    call = _started(CallSettings(playout=PlayoutSettings(paced=True, lead_ms=300)))
    call.on_binary(_pcm(320), T0 + 0.030)  # sample 0 at T0 + 30 ms ...
    call.on_binary(_pcm(320), T0 + 0.045)  # ... then at T0 + 25 ms by this frame
    call.on_binary(_pcm(320), T0 + 0.200)  # late: does not move it
    clock = Clock(call, T0 + 0.2)
    effects = clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(320), 16000,
                                                           at_caller_ms=500)), T0 + 0.2))
    assert _played(effects, 16000) == []
    clock.run_until(T0 + 2)
    assert clock.times_of(m.SendText) == pytest.approx([T0 + 0.525])


def test_a_play_timed_too_far_beyond_the_caller_s_stream_is_rejected():
    """A time more than ``max_play_ahead_ms`` beyond what the caller has sent is refused with
    a reason naming the bound; one within it is queued."""
    settings = CallSettings(commands=replace(CallSettings().commands, max_play_ahead_ms=1000))
    call = _started(settings)
    call.on_binary(_pcm(3200), T0 + 0.2)  # 200 ms of caller audio
    effects = call.on_command(_cmd(m.PlayAudio(_pcm(320), 16000, at_caller_ms=1201)), T0 + 0.2)
    (rejected,) = _bodies(effects, m.CommandRejected)
    assert "1001 ms beyond the caller's stream (at most 1000)" in rejected.reason
    effects = call.on_command(_cmd(m.PlayAudio(_pcm(320), 16000, at_caller_ms=1200)), T0 + 0.2)
    assert _bodies(effects, m.CommandRejected) == []
