"""Capture pause: while paused a call publishes no caller audio, and when the pause ends it
publishes exactly one CaptureWithheld with the range it withheld. Driven by hand, as in
test_call.py: frames, commands and timers in, effects out."""

from __future__ import annotations

import pytest
from test_call import RACES, T0, _bodies, _cmd, _pcm, _played, _published, _started

from gateway.core import capture
from gateway.core import model as m
from gateway.core.call import AGGREGATE_TIMER, CallSettings

PAUSE = m.Command(call_id="aosi-adfad-23-ad", body=m.PauseCapture(), command_id="pause-1")
RESUME = m.Command(call_id="aosi-adfad-23-ad", body=m.ResumeCapture(), command_id="resume-1")


def _frames(call, first: int, count: int, start: float = T0 + 1) -> list[m.Effect]:
    """``count`` frames of 320 samples, frame i received at ``start`` + i * 0.02."""
    effects: list[m.Effect] = []
    for i in range(first, first + count):
        effects += call.on_binary(_pcm(320, i), start + i * 0.02)
    return effects


def test_a_pause_publishes_no_audio_and_the_resume_one_record_with_the_range():
    """3 frames published, 5 withheld, 2 published: seq runs 0..4 without a gap, the position
    jumps by the 1600 withheld samples, and one CaptureWithheld says where and when."""
    call = _started()
    effects = _frames(call, 0, 3)
    assert call.on_command(PAUSE, T0 + 1.05) == []
    withheld = _frames(call, 3, 5)
    assert withheld == []
    effects += call.on_command(RESUME, T0 + 1.2)
    effects += _frames(call, 8, 2)
    audio = _bodies(effects, m.CallerAudio)
    assert [a.seq for a in audio] == [0, 1, 2, 3, 4]
    assert [a.media_position_samples for a in audio] == [0, 320, 640, 960 + 1600, 2880]
    assert [a.pcm for a in audio] == [_pcm(320, i) for i in (0, 1, 2, 8, 9)]
    assert _bodies(effects, m.CaptureWithheld) == [m.CaptureWithheld(
        first_media_position_samples=960, samples=1600, frames=5,
        first_received_at=T0 + 1 + 3 * 0.02, last_received_at=T0 + 1 + 7 * 0.02,
        paused_at=T0 + 1.05)]
    assert [type(r.body) for r in _published(effects)] == (
        [m.CallerAudio] * 3 + [m.CaptureWithheld] + [m.CallerAudio] * 2)


def test_a_pause_with_no_audio_still_ends_with_a_record():
    """A pause during which no frame arrived still gets its CaptureWithheld, with no range."""
    call = _started()
    call.on_command(PAUSE, T0 + 1)
    assert _bodies(call.on_command(RESUME, T0 + 2), m.CaptureWithheld) == [m.CaptureWithheld(
        first_media_position_samples=0, samples=0, frames=0, first_received_at=None,
        last_received_at=None, paused_at=T0 + 1)]


@pytest.mark.parametrize(
    ("commands", "reasons"),
    [
        ([PAUSE, PAUSE], [capture.ALREADY_PAUSED]),
        ([RESUME], [capture.NOT_PAUSED]),
        ([PAUSE, RESUME, RESUME], [capture.NOT_PAUSED]),
        ([PAUSE, PAUSE, RESUME, PAUSE, RESUME], [capture.ALREADY_PAUSED]),
    ],
)
def test_a_pause_while_paused_or_a_resume_while_not_is_rejected(commands, reasons):
    """The second pause, or a resume with no pause, gets a CommandRejected naming why, and
    changes nothing: one CaptureWithheld per pause that really began."""
    call = _started()
    effects: list[m.Effect] = []
    for i, cmd in enumerate(commands):
        effects += call.on_command(cmd, T0 + 1 + i)
    rejected = _bodies(effects, m.CommandRejected)
    assert [r.reason for r in rejected] == reasons
    assert all(r.command_id for r in rejected)
    assert len(_bodies(effects, m.CaptureWithheld)) == sum(c is RESUME for c in commands) - sum(
        r.reason == capture.NOT_PAUSED for r in rejected)


@pytest.mark.parametrize(("steps", "reason"), [r[1:] for r in RACES], ids=[r[0] for r in RACES])
def test_a_call_ending_while_paused_publishes_the_range_before_its_end(steps, reason):
    """However the call ends while paused, exactly one CaptureWithheld comes before the one
    CallEnded, and no caller audio."""
    call = _started()
    call.on_command(PAUSE, T0 + 0.5)
    effects = _frames(call, 0, 2, start=T0 + 0.6)
    for step in steps:
        effects += step(call, T0 + 1)
    kinds = [type(r.body) for r in _published(effects)]
    assert m.CallerAudio not in kinds
    assert kinds.count(m.CaptureWithheld) == 1
    assert kinds.index(m.CaptureWithheld) < kinds.index(m.CallEnded)
    (withheld,) = _bodies(effects, m.CaptureWithheld)
    assert (withheld.samples, withheld.frames) == (640, 2)
    assert _bodies(effects, m.CallEnded)[0].reason is reason


def test_audio_held_for_aggregation_is_published_before_the_pause():
    """Audio captured before the pause and held for aggregation goes out at the pause, and the
    withheld range starts where it ends."""
    call = _started(CallSettings(aggregate_ms=100))
    _frames(call, 0, 3)
    effects = call.on_command(PAUSE, T0 + 1.05)
    (held,) = _bodies(effects, m.CallerAudio)
    assert (held.pcm, held.media_position_samples) == (
        b"".join(_pcm(320, i) for i in range(3)), 0)
    assert m.CancelTimer(AGGREGATE_TIMER) in effects
    assert _frames(call, 3, 10) == []
    (withheld,) = _bodies(call.on_command(RESUME, T0 + 2), m.CaptureWithheld)
    assert (withheld.first_media_position_samples, withheld.samples) == (960, 3200)


def test_everything_but_caller_audio_goes_on_while_paused():
    """While paused, bot audio plays, provider events are published and commands work."""
    call = _started()
    call.on_command(PAUSE, T0 + 1)
    effects = call.on_command(_cmd(m.PlayAudio(_pcm(1600), 16000)), T0 + 1)
    effects += call.on_text('{"event":"dtmf","digit":"5"}', T0 + 1.01)
    effects += call.on_command(_cmd(m.Mark("during-pause")), T0 + 1.2)
    assert b"".join(f.pcm for f in _played(effects, 16000)) == _pcm(1600)
    assert len(_bodies(effects, m.ProviderEvent)) == 1
    assert call.state.value == "active"


def test_a_pause_as_long_as_the_call_holds_only_counters():
    """Ten minutes of withheld audio leave the pause with a few numbers, nothing that grows."""
    call = _started(CallSettings(idle_timeout_s=0))
    call.on_command(PAUSE, T0 + 0.5)
    frame = _pcm(320, 1)
    for i in range(30_000):
        assert call.on_binary(frame, T0 + 1 + i * 0.02) == []
    pause = call._pause
    assert all(isinstance(getattr(pause, slot), int | float)
               for slot in capture.CapturePause.__slots__)
    (withheld,) = _bodies(call.on_socket_closed(1000, True, T0 + 700), m.CaptureWithheld)
    assert (withheld.frames, withheld.samples) == (30_000, 30_000 * 320)


def test_odd_sized_frames_withheld_keep_the_alignment():
    """Odd byte counts are carried over through the pause: the range holds whole samples and
    the next chunk lines up exactly after it."""
    call = _started()
    call.on_binary(_pcm(320), T0 + 1)
    call.on_command(PAUSE, T0 + 1.01)
    call.on_binary(b"\x01" * 641, T0 + 1.02)  # 320 samples and a byte carried
    call.on_binary(b"\x01" * 639, T0 + 1.04)  # with it, 320 more
    effects = call.on_command(RESUME, T0 + 1.05) + call.on_binary(_pcm(320), T0 + 1.06)
    (withheld,) = _bodies(effects, m.CaptureWithheld)
    (after,) = _bodies(effects, m.CallerAudio)
    assert (withheld.first_media_position_samples, withheld.samples) == (320, 640)
    assert (after.seq, after.media_position_samples) == (1, 960)
