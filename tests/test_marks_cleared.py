"""Clear, marks and uninterruptible audio: which marks a clear reports cleared, with how much
of their audio was heard, and what a clear must not cut.

Figures are worked out by hand from the playout model (clips play back to back from when
they are sent; a mark is due when its audio has played). At 16 kHz, 1 ms is 16 samples.
"""

from __future__ import annotations

import pytest
from test_call import T0, Clock, _bodies, _cmd, _outbound, _pcm, _played, _started, _texts

from gateway.core import model as m
from gateway.core import playout as po
from gateway.core.call import CallSettings
from gateway.core.knowlarity import KillAudioFrame, decode_gateway_frame
from gateway.core.model import HangUp, Mark
from gateway.core.playout import Cleared, Playout, PlayoutSettings, ReleasedMarker

T = 1000.0
RATE = 16000
MS = RATE // 1000
PACED = PlayoutSettings(lead_ms=300, clip_ms=200)


Marks = list[tuple[float, ReleasedMarker]]


def _drain(p: Playout, now: float) -> tuple[list[po.ReleasedAudio], Marks]:
    """Pump at every time the playout asks for until it is empty: the audio, and each marker
    with the time it came out."""
    audio: list[po.ReleasedAudio] = []
    markers: Marks = []
    for _ in range(1000):
        released, delay = p.pump(now)
        audio += [r for r in released if isinstance(r, po.ReleasedAudio)]
        markers += [(now, r) for r in released if isinstance(r, ReleasedMarker)]
        if delay is None:
            return audio, markers
        now += delay
    raise AssertionError("the playout never drained")


def _queue(p: Playout, items: list[tuple[str, int | str]]) -> None:
    """("a", ms) interruptible audio, ("k", ms) uninterruptible audio, ("m", name) a mark."""
    for i, (kind, arg) in enumerate(items):
        if kind == "m":
            assert p.enqueue_marker(Mark(str(arg))) is None
        else:
            assert isinstance(arg, int)
            assert p.enqueue_audio(_pcm(arg * MS, i), uninterruptible=kind == "k") is None


# --- Playout on its own ----------------------------------------------------------------


def test_a_mark_cut_mid_prompt_is_cleared_with_the_ms_played_when_the_clear_came():
    """1000 ms queued, clear 250 ms into it: 600 ms were sent (three 200 ms clips), 350 of them
    still playing, so 250 ms were heard and the 400 ms never sent are dropped."""
    p = Playout(PACED, RATE)
    _queue(p, [("a", 1000), ("m", "prompt")])
    _, delay = p.pump(T)  # two clips, playing until T+0.4
    assert delay == pytest.approx(0.1)
    p.pump(T + delay)  # a third, until T+0.6
    assert p.clear(T + 0.25) == Cleared(400 * MS, (ReleasedMarker(
        Mark("prompt"), cleared=True, heard_samples=250 * MS),))
    assert p.pump(T + 0.25) == ([], None)


def test_a_mark_whose_audio_was_all_sent_stays_pending_and_is_reached_once_played():
    """A clear that discards nothing of a mark's audio (all sent, still playing) leaves the mark
    pending: it is reached when the audio has played, with the whole of it heard."""
    p = Playout(PACED, RATE)
    _queue(p, [("a", 300), ("m", "short")])
    released, delay = p.pump(T)  # 200 + 100 ms sent: playing until T+0.3
    assert len(released) == 2 and delay == pytest.approx(0.3)
    assert p.clear(T + 0.1) == Cleared(0, ())
    _, markers = _drain(p, T + 0.1)
    assert markers == [(pytest.approx(T + 0.3), ReleasedMarker(Mark("short"),
                                                               heard_samples=300 * MS))]


# (queue before the clear, at T with nothing sent yet; markers the clear releases at once;
#  markers released afterwards, in order, with (name, cleared, heard ms))
CLEARS = [
    ("cut prompt", [("a", 500), ("m", "p")], [("p", True, 0)], []),
    ("back-to-back marks share the cut", [("a", 500), ("m", "p"), ("m", "q")],
     [("p", True, 0), ("q", True, 0)], []),
    ("each mark its own segment", [("a", 100), ("m", "p"), ("a", 100), ("m", "q")],
     [("p", True, 0), ("q", True, 0)], []),
    ("a mark after kept audio stays pending and is reached",
     [("k", 300), ("m", "k-done")], [], [("k-done", False, 300)]),
    ("a mark cut before kept audio waits for it, then is cleared",
     [("a", 200), ("k", 300), ("m", "p")], [], [("p", True, 300)]),
    ("cleared ahead of kept audio at once, reached after it",
     [("a", 200), ("m", "p"), ("k", 300), ("m", "k-done")],
     [("p", True, 0)], [("k-done", False, 300)]),
    ("a cut mark behind a pending one waits its turn",
     [("k", 300), ("m", "k-done"), ("a", 400), ("m", "p")],
     [], [("k-done", False, 300), ("p", True, 0)]),
    ("kept audio at the end, nothing after it", [("a", 100), ("m", "p"), ("k", 200)],
     [("p", True, 0)], []),
]


@pytest.mark.parametrize(("items", "at_once", "later"), [c[1:] for c in CLEARS],
                         ids=[c[0] for c in CLEARS])
def test_clear_reports_each_mark_once_in_order_cleared_or_reached(items, at_once, later):
    """A mark whose segment lost audio is cleared (at once, or after kept audio ahead of it);
    one that lost nothing is reached once played; every mark once, in queue order."""
    p = Playout(PACED, RATE)
    _queue(p, items)
    cleared = p.clear(T)
    assert cleared.dropped_samples == sum(ms for kind, ms in items if kind == "a") * MS
    assert [(r.marker.name, r.cleared, r.heard_samples // MS) for r in cleared.released] == at_once
    audio, markers = _drain(p, T)
    assert [(r.marker.name, r.cleared, r.heard_samples // MS) for _, r in markers] == later
    kept = [_pcm(ms * MS, i) for i, (kind, ms) in enumerate(items) if kind == "k"]
    assert b"".join(a.pcm for a in audio) == b"".join(kept)


def test_uninterruptible_audio_survives_a_clear_whole_and_in_order_after_what_was_sent():
    """Clips already sent play on; the kept audio follows them bit for bit, with media
    positions running on from the sent audio."""
    p = Playout(PACED, RATE)
    first, kept, later = _pcm(1000 * MS, 1), _pcm(700 * MS, 2), _pcm(100 * MS, 3)
    p.enqueue_audio(first)
    p.enqueue_audio(kept, uninterruptible=True)
    p.enqueue_audio(later)
    sent, _ = p.pump(T)  # 400 ms of ``first``
    assert p.clear(T + 0.05).dropped_samples == 600 * MS + 100 * MS
    audio, _ = _drain(p, T + 0.05)
    assert b"".join(a.pcm for a in audio) == kept
    assert audio[0].media_position_samples == 400 * MS
    assert p.held_bytes == 0


def test_a_clip_is_never_part_interruptible():
    """Interruptible and uninterruptible audio never share a clip: a clip is kept or cut whole."""
    p = Playout(PlayoutSettings(lead_ms=1000, clip_ms=200), RATE)
    p.enqueue_audio(_pcm(50 * MS, 1))
    p.enqueue_audio(_pcm(50 * MS, 2), uninterruptible=True)
    p.enqueue_audio(_pcm(50 * MS, 3))
    released, _ = p.pump(T)
    assert [len(r.pcm) // 2 // MS for r in released] == [50, 50, 50]


def test_a_clear_ends_a_segment_even_when_its_audio_is_kept():
    """Kept audio with no mark after it belongs to no later mark: a mark queued after the clear
    counts only the audio queued after the clear."""
    p = Playout(PACED, RATE)
    _queue(p, [("k", 300)])
    assert p.clear(T) == Cleared(0, ())
    _queue(p, [("a", 200), ("m", "after")])
    _, markers = _drain(p, T)
    assert [(r.marker.name, r.cleared, r.heard_samples // MS) for _, r in markers] == [
        ("after", False, 200)]


def test_a_mark_kept_cleared_stays_cleared_through_a_second_clear():
    """A mark cleared behind kept audio is still reported cleared after another clear."""
    p = Playout(PACED, RATE)
    _queue(p, [("a", 100), ("k", 600), ("m", "p")])
    p.clear(T)
    p.pump(T)
    assert p.clear(T + 0.1) == Cleared(0, ())
    _, markers = _drain(p, T + 0.1)
    assert [(r.marker.name, r.cleared) for _, r in markers] == [("p", True)]


def test_a_hang_up_behind_kept_audio_waits_for_it():
    """A clear releases a hang-up at once only if no kept audio is ahead of it."""
    p = Playout(PACED, RATE)
    _queue(p, [("a", 100), ("k", 300)])
    p.enqueue_marker(HangUp())
    assert p.clear(T).released == ()
    _, markers = _drain(p, T)
    assert markers == [(pytest.approx(T + 0.3), ReleasedMarker(HangUp(), cleared=True,
                                                               heard_samples=300 * MS))]


def test_unpaced_marks_count_sent_audio_as_heard():
    """Unpaced, audio counts as played when sent: a mark is reached when released with its whole
    segment, and a clear between two pumps clears it with what was sent."""
    settings = PlayoutSettings(paced=False, clip_ms=20)
    p = Playout(settings, RATE)
    _queue(p, [("a", 100), ("m", "short")])
    released, _ = p.pump(T)
    assert released[-1] == ReleasedMarker(Mark("short"), heard_samples=100 * MS)
    _queue(p, [("a", 1000), ("m", "long")])
    released, wake = p.pump(T)  # at most 10 clips of 20 ms in one pump
    assert wake == 0.0
    assert p.clear(T) == Cleared(800 * MS, (ReleasedMarker(Mark("long"), cleared=True,
                                                           heard_samples=200 * MS),))


def test_kept_audio_counts_against_the_bounds_and_gives_every_byte_back():
    """Uninterruptible audio is held like any audio: bounded per call and per node, and its
    bytes return as it is released."""
    budget = po.AudioBudget(3200 * 2)
    p = Playout(PlayoutSettings(max_call_bytes=3200 * 2, lead_ms=0, clip_ms=200), RATE, budget)
    assert p.enqueue_audio(_pcm(3200), uninterruptible=True) is None
    assert p.enqueue_audio(_pcm(2), uninterruptible=True) is not None
    p.clear(T)
    assert budget.used == 6400
    _drain(p, T)
    assert (budget.used, p.held_bytes) == (0, 0)


# --- the call ----------------------------------------------------------------------------


def _marks(clock: Clock) -> list[tuple[float, m.PlaybackEvent]]:
    return [(t, e.record.body) for t, e in clock.log if isinstance(e, m.Publish)
            and isinstance(e.record.body, m.PlaybackEvent)
            and e.record.body.kind in (m.PlaybackKind.MARK_REACHED, m.PlaybackKind.MARK_CLEARED)]


def test_a_non_interruptible_prompt_survives_a_clear_and_is_heard_in_full():
    """Clear during [1 s interruptible][500 ms uninterruptible][mark]: the unsent 600 ms of the
    first are dropped, the second is sent whole, and the mark is cleared (its segment was cut)
    once the kept audio has played, with 400 + 500 ms heard."""
    call = _started()
    clock = Clock(call, T0 + 1)
    first, kept = _pcm(16000, 1), _pcm(8000, 2)
    clock.apply(call.on_command(_cmd(m.PlayAudio(first, 16000)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.PlayAudio(kept, 16000, uninterruptible=True)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.Mark("notice")), T0 + 1))
    effects = clock.apply(call.on_command(_cmd(m.ClearAudio()), T0 + 1.05))
    assert _bodies(effects, m.PlaybackEvent) == [
        m.PlaybackEvent(m.PlaybackKind.CLEARED, samples=9600)]
    clock.run_until(T0 + 10)
    heard = b"".join(f.pcm for f in _played(clock.effects(), 16000))
    assert heard == first[:12800] + kept
    assert _marks(clock) == [(pytest.approx(T0 + 1.9), m.PlaybackEvent(
        m.PlaybackKind.MARK_CLEARED, mark_name="notice", heard_ms=900))]


def test_a_mark_after_kept_audio_is_reached_and_one_before_it_cleared_at_once():
    """[1 s][mark a][500 ms uninterruptible][mark b], clear at +50 ms: a is cleared at once with
    50 ms heard, b stays pending and is reached with its 500 ms once they have played."""
    call = _started()
    clock = Clock(call, T0 + 1)
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(16000, 1), 16000)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.Mark("a")), T0 + 1))
    clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(8000, 2), 16000, True)), T0 + 1))
    clock.apply(call.on_command(_cmd(m.Mark("b")), T0 + 1))
    clock.run_until(T0 + 1.05)
    clock.apply(call.on_command(_cmd(m.ClearAudio()), T0 + 1.05))
    clock.run_until(T0 + 10)
    assert _marks(clock) == [
        (pytest.approx(T0 + 1.05), m.PlaybackEvent(m.PlaybackKind.MARK_CLEARED, mark_name="a",
                                                   heard_ms=50)),
        (pytest.approx(T0 + 1.9), m.PlaybackEvent(m.PlaybackKind.MARK_REACHED, mark_name="b",
                                                  heard_ms=500)),
    ]


KILL_RULE = [
    ("no uninterruptible audio: sent", [], 1.05, True),
    ("uninterruptible audio playing: withheld", [True], 1.05, False),
    ("uninterruptible audio queued, not yet sent: withheld", [False, True], 1.05, False),
    ("uninterruptible audio played out: sent", [True], 1.6, True),
]


@pytest.mark.parametrize(("plays", "at", "sent"), [k[1:] for k in KILL_RULE],
                         ids=[k[0] for k in KILL_RULE])
def test_kill_audio_is_never_sent_while_uninterruptible_audio_is_queued_or_playing(
        plays, at, sent):
    """With kill_audio_on_clear, a clear sends killAudio unless uninterruptible audio is queued
    or sent and not yet played; when it holds back, the CLEARED record says why."""
    call = _started(CallSettings(kill_audio_on_clear=True))
    clock = Clock(call, T0 + 1)
    for i, uninterruptible in enumerate(plays):
        clock.apply(call.on_command(_cmd(m.PlayAudio(_pcm(8000, i), 16000, uninterruptible)),
                                    T0 + 1))
    clock.run_until(T0 + at)
    effects = clock.apply(call.on_command(_cmd(m.ClearAudio()), T0 + at))
    kills = [t for t in _texts(effects)
             if isinstance(decode_gateway_frame(t, call_sample_rate=16000), KillAudioFrame)]
    assert len(kills) == (1 if sent else 0)
    assert len(_outbound(effects)) == len(kills)
    (event,) = _bodies(effects, m.PlaybackEvent)
    assert ("killAudio not sent" in event.detail) is not sent


def test_uninterruptible_is_false_by_default():
    """A PlayAudio without the flag is interruptible: today's behaviour."""
    assert m.PlayAudio(b"", 16000).uninterruptible is False
