"""Turn latency: the energy detector and the turns it measures, worked by hand.

Caller audio is 16 kHz in 20 ms frames (320 samples): a loud frame is a constant
amplitude of 1000 (RMS 1000, over the threshold of 500), a quiet one all zeros.
The hangover (500 ms) is 25 quiet frames.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import records
from gateway.core import model as m
from gateway.core import turns
from gateway.core.call import Call, CallSettings
from gateway.core.playout import PlayoutSettings
from gateway.core.turns import TurnMeter

RATE = 16000
FRAME = 320  # 20 ms
LOUD = (1000).to_bytes(2, "little", signed=True) * FRAME
QUIET = b"\x00\x00" * FRAME
DATA = Path(__file__).parent / "data"


def _feed(meter: TurnMeter, frames: list[bytes], t0: float) -> tuple[list[float], float]:
    """Frames received every 20 ms from t0; the latencies returned and the next frame's time."""
    out, t = [], t0
    for pcm in frames:
        got = meter.caller_audio(pcm, t)
        if got is not None:
            out.append(got)
        t = round(t + 0.02, 6)
    return out, t


@pytest.mark.parametrize(("amplitude", "loud"), [(500, True), (499, False), (-500, True)])
def test_threshold_is_rms_of_the_frame(amplitude: int, loud: bool) -> None:
    """A frame is speech exactly when its RMS reaches THRESHOLD_RMS (500)."""
    pcm = amplitude.to_bytes(2, "little", signed=True) * FRAME
    assert (turns.mean_square(pcm) >= turns.THRESHOLD_RMS ** 2) is loud


def test_clip_sent_inside_the_hangover_is_the_turn_once_the_hangover_passes() -> None:
    """Speech 0.00-0.20 s, a clip at 0.50 s: the 25th quiet frame (at 0.68 s) yields 300 ms."""
    meter = TurnMeter(RATE)
    got, t = _feed(meter, [LOUD] * 10 + [QUIET] * 15, 0.0)  # quiet frames 0.20 .. 0.48
    assert got == [] and t == pytest.approx(0.50)
    assert meter.bot_audio(0.50) is None  # the hangover has not passed yet
    assert meter.bot_audio(0.52) is None  # only the first clip counts
    got, _ = _feed(meter, [QUIET] * 10, 0.50)  # the 25th quiet frame arrives at 0.68
    assert got == [pytest.approx(0.30)]
    assert meter.summary() == turns.TurnSummary(1, (300,))


def test_clip_after_the_hangover_is_measured_when_sent() -> None:
    """Speech ends at 0.20 s, the hangover passes at 0.68 s, a clip at 0.90 s: 700 ms."""
    meter = TurnMeter(RATE)
    got, _ = _feed(meter, [LOUD] * 10 + [QUIET] * 30, 0.0)
    assert got == []
    assert meter.bot_audio(0.90) == pytest.approx(0.70)
    assert meter.bot_audio(0.92) is None  # the turn is taken
    assert meter.summary() == turns.TurnSummary(1, (700,))


def test_a_clip_during_speech_and_a_pause_shorter_than_the_hangover_take_no_turn() -> None:
    """A clip sent while the caller speaks, or in a 200 ms pause before they go on, is
    not an answer; the speech's real end (1.00 s) answered at 1.25 s is 250 ms."""
    meter = TurnMeter(RATE)
    got, t = _feed(meter, [LOUD] * 5, 0.0)
    assert meter.bot_audio(0.05) is None  # before the end of the frame at 0.08
    got, t = _feed(meter, [QUIET] * 10, t)  # 0.10 .. 0.28: a pause
    assert meter.bot_audio(0.25) is None  # candidate, dropped by the speech that follows
    got2, t = _feed(meter, [LOUD] * 35, t)  # 0.30 .. 0.98, speech ends at 1.00
    got3, t = _feed(meter, [QUIET] * 25, t)
    assert got + got2 + got3 == []
    assert meter.bot_audio(1.25) == pytest.approx(0.25)
    assert meter.summary().latencies_ms == (250,)


def test_a_caller_stream_that_stops_is_quiet_for_the_hangover() -> None:
    """Speech ends at 0.20 s and no frame follows: a clip at 0.40 s is held, the clip at
    0.75 s (past the hangover) confirms the end, and the turn is the first clip's 200 ms."""
    meter = TurnMeter(RATE)
    _feed(meter, [LOUD] * 10, 0.0)
    assert meter.bot_audio(0.40) is None
    assert meter.bot_audio(0.75) == pytest.approx(0.20)
    assert meter.summary() == turns.TurnSummary(1, (200,))
    assert meter.bot_audio(0.80) is None


def test_a_click_shorter_than_min_speech_is_no_turn() -> None:
    """80 ms of loud audio (under MIN_SPEECH_MS, 100 ms) then silence: no turn."""
    meter = TurnMeter(RATE)
    _feed(meter, [LOUD] * 4 + [QUIET] * 30, 0.0)
    assert meter.bot_audio(1.0) is None
    _feed(meter, [LOUD] * 4, 2.0)  # and with no frame after it
    assert meter.bot_audio(3.0) is None
    assert meter.summary() == turns.TurnSummary(0, ())


def test_no_speech_no_turn_and_a_second_turn_is_measured_from_its_own_end() -> None:
    """Bot audio with no caller speech is no turn; two answered utterances are two turns."""
    meter = TurnMeter(RATE)
    assert meter.bot_audio(0.0) is None
    _, t = _feed(meter, [LOUD] * 10 + [QUIET] * 25, 0.0)  # ends 0.20; t = 0.70
    assert meter.bot_audio(0.70) == pytest.approx(0.50)
    _, t = _feed(meter, [LOUD] * 10 + [QUIET] * 25, t)  # ends 0.90; t = 1.40
    assert meter.bot_audio(1.50) == pytest.approx(0.60)
    assert meter.summary() == turns.TurnSummary(2, (500, 600))


def test_only_the_first_turns_are_listed_but_all_are_counted() -> None:
    """Past MAX_LISTED_TURNS the latencies are counted, not listed."""
    meter = TurnMeter(RATE)
    t = 0.0
    for _ in range(turns.MAX_LISTED_TURNS + 3):
        _, t = _feed(meter, [LOUD] * 5 + [QUIET] * 25, t)  # ends 0.50 s before t
        assert meter.bot_audio(t) == pytest.approx(0.50)
    s = meter.summary()
    assert s.turns == turns.MAX_LISTED_TURNS + 3
    assert s.latencies_ms == (500,) * turns.MAX_LISTED_TURNS


def _started_call() -> Call:
    settings = CallSettings(idle_timeout_s=0,
                            playout=PlayoutSettings(paced=False))
    call = Call(settings, provisional_id="p", reply_topic="r", request_path="/x")
    call.opened(99.0)
    call.on_text((DATA / "start_json.txt").read_text(), 100.0)  # 16 kHz
    assert call.sample_rate == RATE
    return call


def test_the_call_reports_each_turn_as_an_effect_and_all_of_them_in_ended() -> None:
    """Through the call: speech 100.00-100.20, a play at 100.95 s gives a TurnMeasured
    of 750 ms, and the ended record carries turns=1, turn_latency_ms=[750]."""
    call = _started_call()
    effects: list[m.Effect] = []
    t = 100.0
    for pcm in [LOUD] * 10 + [QUIET] * 30:
        effects += call.on_binary(pcm, t)
        t += 0.02
    assert not [e for e in effects if isinstance(e, m.TurnMeasured)]
    played = call.on_command(m.Command("c", m.PlayAudio(QUIET * 5, RATE)), 100.95)
    measured = [e for e in played if isinstance(e, m.TurnMeasured)]
    assert [e.latency for e in measured] == [pytest.approx(0.75)]
    ended = call.on_socket_closed(1000, True, 101.5)
    (end,) = [e.record for e in ended if isinstance(e, m.Publish)
              and isinstance(e.record.body, m.CallEnded)]
    assert isinstance(end.body, m.CallEnded)
    assert (end.body.turns, end.body.turn_latency_ms) == (1, (750,))
    proto = records.decode_inbound(records.encode_inbound(end, "node-a"))
    assert proto.ended.turns == 1 and list(proto.ended.turn_latency_ms) == [750]
