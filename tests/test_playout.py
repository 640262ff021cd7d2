"""Playout on its own: bot audio held and released in clips paced to a playout clock."""

from __future__ import annotations

import pytest

from gateway.core.model import HangUp, Mark, Transfer
from gateway.core.playout import (
    BUDGET_EXHAUSTED,
    END_QUEUED,
    MAX_CLIPS_PER_PUMP,
    QUEUE_FULL,
    TOO_MANY_MARKERS,
    AudioBudget,
    Cleared,
    Playout,
    PlayoutSettings,
    ReleasedAudio,
    ReleasedMarker,
)

T = 1000.0
RATE = 16000


def _pcm(ms: int, seed: int = 0, rate: int = RATE) -> bytes:
    """``ms`` of distinct s16le samples, so that order and boundaries show."""
    n = ms * rate // 1000
    return b"".join(((i * 31 + seed * 7777) % 65536).to_bytes(2, "little") for i in range(n))


def _audio(released) -> list[ReleasedAudio]:
    return [r for r in released if isinstance(r, ReleasedAudio)]


def _sizes(released) -> list[int]:
    return [len(r.pcm) // 2 for r in _audio(released)]


# (settings, queued audio chunks in ms, samples per clip released at T, delay to next release)
PUMPS = [
    ("lead 300 clip 200", PlayoutSettings(lead_ms=300, clip_ms=200), [1000],
     [3200, 3200], 0.1),
    ("lead 0 clip 200", PlayoutSettings(lead_ms=0, clip_ms=200), [1000], [3200], 0.2),
    ("lead 250 clip 100", PlayoutSettings(lead_ms=250, clip_ms=100), [1000],
     [1600, 1600, 1600], 0.05),
    ("all fits in one clip", PlayoutSettings(lead_ms=300, clip_ms=200), [100], [1600], None),
    ("lead covers it all", PlayoutSettings(lead_ms=1000, clip_ms=200), [500],
     [3200, 3200, 1600], None),
    ("small chunks joined", PlayoutSettings(lead_ms=0, clip_ms=200), [50, 50, 50],
     [2400], None),
    ("chunk split at clip size", PlayoutSettings(lead_ms=0, clip_ms=200), [150, 100],
     [3200], 0.2),
    ("unpaced: all at once, in clips", PlayoutSettings(paced=False), [1000, 500],
     [3200] * 7 + [1600], None),
]


@pytest.mark.parametrize(("settings", "chunks", "sizes", "wake"), [p[1:] for p in PUMPS],
                         ids=[p[0] for p in PUMPS])
def test_first_pump_releases_up_to_lead_in_clips(settings, chunks, sizes, wake):
    """A pump releases clips of at most clip_ms while the playout clock is within lead."""
    p = Playout(settings, RATE)
    for i, ms in enumerate(chunks):
        assert p.enqueue_audio(_pcm(ms, i)) is None
    released, delay = p.pump(T)
    assert _sizes(released) == sizes
    assert delay == (None if wake is None else pytest.approx(wake))
    assert p.released_samples == sum(sizes)
    assert p.queued_samples == sum(chunks) * 16 - sum(sizes)


def test_released_audio_is_the_queued_audio_in_order_with_media_positions():
    """Clips concatenate to the queued PCM bit for bit; each carries its first sample's position."""
    p = Playout(PlayoutSettings(lead_ms=300, clip_ms=200), RATE)
    chunks = [_pcm(130, 1), _pcm(70, 2), _pcm(450, 3)]
    for c in chunks:
        p.enqueue_audio(c)
    out, now = [], T
    for _ in range(100):
        released, delay = p.pump(now)
        out += released
        if delay is None:
            break
        now += delay
    assert b"".join(r.pcm for r in _audio(out)) == b"".join(chunks)
    assert _sizes(out) == [3200, 3200, 3200, 800]
    assert [r.media_position_samples for r in _audio(out)] == [0, 3200, 6400, 9600]


def test_later_pumps_release_one_clip_each_as_the_clock_advances():
    """After the first burst, each due pump releases one more clip, lead ahead of the ear."""
    p = Playout(PlayoutSettings(lead_ms=300, clip_ms=200), RATE)
    p.enqueue_audio(_pcm(1000))
    delay = p.pump(T)[1]
    assert delay == pytest.approx(0.1)
    # Early: nothing, and the same target time.
    assert p.pump(T + delay / 2) == ([], pytest.approx(delay / 2))
    now, sizes, delays = T + delay, [], []
    while delay is not None:
        released, delay = p.pump(now)
        sizes.append(_sizes(released))
        delays.append(delay)
        now += delay or 0
    assert sizes == [[3200], [3200], [3200]]
    assert delays == [pytest.approx(0.2), pytest.approx(0.2), None]


def test_playout_clock_restarts_from_now_after_a_gap():
    """Audio queued after the previous clip has finished plays from now, not from the old end."""
    p = Playout(PlayoutSettings(lead_ms=300, clip_ms=200), RATE)
    p.enqueue_audio(_pcm(200))
    assert _sizes(p.pump(T)[0]) == [3200]
    p.enqueue_audio(_pcm(1000, 1))
    released, delay = p.pump(T + 5)
    assert _sizes(released) == [3200, 3200]
    assert delay == pytest.approx(0.1)
    assert [r.media_position_samples for r in _audio(released)] == [3200, 6400]


def test_a_pump_that_is_late_catches_up_only_to_lead():
    """A pump long after the last release sends lead's worth again, not the whole backlog."""
    p = Playout(PlayoutSettings(lead_ms=300, clip_ms=200), RATE)
    p.enqueue_audio(_pcm(3000))
    p.pump(T)
    released, _ = p.pump(T + 2)  # the two clips sent at T have long played out
    assert _sizes(released) == [3200, 3200]


@pytest.mark.parametrize(
    ("rate", "clip_ms", "clip_samples"),
    [(16000, 200, 3200), (8000, 20, 160), (44100, 10, 441), (8000, 1, 8), (8000, 0, 1)],
)
def test_clips_hold_whole_samples_and_never_exceed_clip_size(rate, clip_ms, clip_samples):
    """Every clip is an even number of bytes and at most clip_ms long (at least one sample)."""
    p = Playout(PlayoutSettings(lead_ms=10_000, clip_ms=clip_ms), rate)
    pcm = _pcm(50, 5, rate) + _pcm(3, 6, rate)
    p.enqueue_audio(pcm)
    released, wake = p.pump(T)
    while wake == 0.0:  # more than MAX_CLIPS_PER_PUMP clips are due: the next pump is now
        more, wake = p.pump(T)
        released += more
    clips = _audio(released)
    assert all(len(c.pcm) % 2 == 0 for c in clips)
    assert all(len(c.pcm) == 2 * clip_samples for c in clips[:-1])
    assert 0 < len(clips[-1].pcm) <= 2 * clip_samples
    assert b"".join(c.pcm for c in clips) == pcm


def test_a_clip_never_spans_a_marker_and_the_marker_waits_for_the_audio_before_it():
    """Audio on both sides of a marker goes in separate clips; the marker waits for play end."""
    p = Playout(PlayoutSettings(lead_ms=1000, clip_ms=200), RATE)
    before, after = _pcm(100, 1), _pcm(100, 2)
    p.enqueue_audio(before)
    p.enqueue_marker(Mark("m"))
    p.enqueue_audio(after)
    released, delay = p.pump(T)
    assert released == [ReleasedAudio(before, 0)]
    assert delay == pytest.approx(0.1)
    assert p.pump(T + 0.05) == ([], pytest.approx(0.05))
    released, delay = p.pump(T + 0.1)
    assert released == [ReleasedMarker(Mark("m"), heard_samples=1600),
                        ReleasedAudio(after, 1600)]
    assert delay is None


def test_unpaced_markers_follow_their_audio_at_once():
    """Unpaced, audio (still cut at clip_ms) and the markers between it are all released by
    one pump, in order."""
    p = Playout(PlayoutSettings(paced=False), RATE)
    a, b = _pcm(100, 1), _pcm(300, 2)
    p.enqueue_audio(a)
    p.enqueue_marker(Mark("m"))
    p.enqueue_audio(b)
    p.enqueue_marker(HangUp())
    assert p.pump(T) == ([ReleasedAudio(a, 0), ReleasedMarker(Mark("m"), heard_samples=1600),
                          ReleasedAudio(b[:6400], 1600), ReleasedAudio(b[6400:], 4800),
                          ReleasedMarker(HangUp(), heard_samples=4800)], None)


def test_markers_on_an_idle_playout_are_released_at_once_in_order():
    """Markers with no audio ahead of them come out of the next pump, in the order queued."""
    p = Playout(PlayoutSettings(), RATE)
    t = Transfer((("parameter1", "default"),))
    p.enqueue_marker(Mark("a"))
    p.enqueue_marker(Mark("b"))
    p.enqueue_marker(t)
    assert p.pump(T) == ([ReleasedMarker(Mark("a")), ReleasedMarker(Mark("b")),
                          ReleasedMarker(t)], None)


def test_empty_playout_releases_nothing_and_needs_no_wake():
    """Pumping an empty playout releases nothing and asks for no timer."""
    p = Playout(PlayoutSettings(), RATE)
    assert p.enqueue_audio(b"") is None
    assert p.pump(T) == ([], None)
    assert (p.queued_samples, p.released_samples) == (0, 0)


def test_clear_returns_dropped_samples_and_markers_in_order():
    """Clear drops all unsent audio and hands back the queued markers, cleared, in order."""
    p = Playout(PlayoutSettings(lead_ms=0, clip_ms=200), RATE)
    p.enqueue_audio(_pcm(300))
    p.pump(T)  # 200 ms released, 100 ms still held
    p.enqueue_marker(Mark("a"))
    p.enqueue_audio(_pcm(50))
    p.enqueue_marker(HangUp())
    # The 200 ms sent at T are all still playing at T: nothing of "a" heard yet.
    assert p.clear(T) == Cleared(1600 + 800, (ReleasedMarker(Mark("a"), cleared=True),
                                              ReleasedMarker(HangUp(), cleared=True)))
    assert p.queued_samples == 0
    assert p.released_samples == 3200
    assert p.clear(T) == Cleared(0, ())


def test_clear_keeps_the_playout_clock_and_media_position():
    """Released audio still plays after a clear: later marks wait for it, positions go on."""
    p = Playout(PlayoutSettings(lead_ms=0, clip_ms=200), RATE)
    p.enqueue_audio(_pcm(1000))
    p.pump(T)
    p.clear(T)
    p.enqueue_marker(Mark("after"))
    assert p.pump(T + 0.1) == ([], pytest.approx(0.1))
    assert p.pump(T + 0.2)[0] == [ReleasedMarker(Mark("after"))]
    p.enqueue_audio(_pcm(100, 9))
    released, _ = p.pump(T + 0.2)
    assert [r.media_position_samples for r in _audio(released)] == [3200]


@pytest.mark.parametrize(
    ("chunks", "refused"),
    [([100], [None]), ([101], [QUEUE_FULL]), ([60, 40], [None, None]),
     ([60, 41], [None, QUEUE_FULL]), ([100, 0], [None, None])],
)
def test_enqueue_refuses_audio_beyond_the_call_bound_whole(chunks, refused):
    """Audio that would take the call past max_call_bytes is refused whole, with the reason."""
    p = Playout(PlayoutSettings(max_call_bytes=3200), RATE)
    assert [p.enqueue_audio(_pcm(ms)) for ms in chunks] == refused
    accepted = sum(ms for ms, r in zip(chunks, refused, strict=True) if not r)
    assert p.queued_samples == accepted * 16
    assert p.held_bytes == accepted * 32


# (call rate, bot rate, bot bytes, bytes held: the larger of before and after conversion)
HELD = [
    (16000, 16000, 3200, 3200),
    (16000, 8000, 3200, 6400),
    (8000, 48000, 9600, 9600),
    (8000, 44100, 8820, 8820),
    (48000, 8000, 1600, 9600),
]


@pytest.mark.parametrize(("call_rate", "rate", "size", "held"), HELD)
def test_held_bytes_count_the_larger_of_input_and_converted(call_rate, rate, size, held):
    """What a call holds is counted before any conversion, as the larger of the two sizes."""
    p = Playout(PlayoutSettings(max_call_bytes=held), call_rate)
    assert p.enqueue_audio(bytes(size), rate) is None
    assert p.held_bytes == held
    p2 = Playout(PlayoutSettings(max_call_bytes=held - 1), call_rate)
    assert p2.enqueue_audio(bytes(size), rate) == QUEUE_FULL


def test_node_budget_is_shared_and_returned_by_release_and_clear():
    """Two playouts share one budget: refused past it, and every byte comes back."""
    budget = AudioBudget(6399)
    a = Playout(PlayoutSettings(lead_ms=0, clip_ms=20), RATE, budget)
    b = Playout(PlayoutSettings(lead_ms=0, clip_ms=20), RATE, budget)
    assert a.enqueue_audio(_pcm(100)) is None
    assert b.enqueue_audio(_pcm(100)) == BUDGET_EXHAUSTED
    a.pump(T)  # one 20 ms clip released: 640 bytes back
    assert budget.used == 3200 - 640
    assert b.enqueue_audio(_pcm(20)) is None
    a.clear(T)
    b.clear(T)
    assert budget.used == 0


def test_markers_are_bounded_and_counted_down_as_released():
    """Past max_markers a marker is refused; released markers free their places."""
    p = Playout(PlayoutSettings(max_markers=2), RATE)
    assert [p.enqueue_marker(Mark(str(i))) for i in range(3)] == [None, None, TOO_MANY_MARKERS]
    p.pump(T)
    assert p.markers == 0
    assert p.enqueue_marker(Mark("again")) is None


def test_resampled_audio_is_converted_in_pieces_and_all_of_it_is_released():
    """A long command at another rate is converted as it is released; the total is its length
    at the call's rate, and the held bytes return to zero."""
    p = Playout(PlayoutSettings(paced=False), 8000)
    assert p.enqueue_audio(bytes(2 * 48000 * 3), 48000) is None  # 3 s at 48 kHz
    total = 0
    t = T
    for _ in range(100):
        released, wake = p.pump(t)
        total += sum(len(r.pcm) for r in _audio(released)) // 2
        if wake is None:
            break
        t += wake
    assert abs(total - 24000) <= 2
    assert p.held_bytes == 0


def test_an_unpaced_pump_releases_a_bounded_number_of_clips():
    """Unpaced, one pump releases at most MAX_CLIPS_PER_PUMP clips and asks to run again now."""
    p = Playout(PlayoutSettings(paced=False, clip_ms=20), RATE)
    p.enqueue_audio(_pcm(2000))
    released, wake = p.pump(T)
    assert len(_audio(released)) == MAX_CLIPS_PER_PUMP
    assert wake == 0.0


@pytest.mark.parametrize(
    ("settings", "rate"),
    [
        (PlayoutSettings(lead_ms=300, clip_ms=200), 16000),
        (PlayoutSettings(lead_ms=300, clip_ms=100), 16000),
        (PlayoutSettings(lead_ms=250, clip_ms=60), 8000),
        (PlayoutSettings(lead_ms=100, clip_ms=20), 8000),
        (PlayoutSettings(lead_ms=7, clip_ms=13), 44100),
        (PlayoutSettings(lead_ms=0, clip_ms=20), 16000),
    ],
)
@pytest.mark.parametrize("start", [0.0, 0.1, 1000.0, 1_764_158_400.123])
def test_driving_the_returned_delays_always_makes_progress(settings, rate, start):
    """Waking exactly when asked always releases something: no zero delay, no endless wake-ups."""
    p = Playout(settings, rate)
    pcm = _pcm(2000, 3, rate)
    p.enqueue_audio(pcm)
    p.enqueue_marker(Mark("end"))
    out, now = [], start
    for _ in range(1000):
        released, delay = p.pump(now)
        out += released
        if delay is None:
            break
        assert delay > 0 and now + delay > now
        now += delay
    else:
        pytest.fail("the playout never drained")
    assert b"".join(r.pcm for r in _audio(out)) == pcm
    assert out[-1] == ReleasedMarker(Mark("end"), heard_samples=len(pcm) // 2)


def test_only_one_hang_up_or_transfer_waits_at_a_time():
    """The call ends at the first hang-up or transfer: a second one queued is refused."""
    p = Playout(PlayoutSettings(), RATE)
    p.enqueue_audio(_pcm(1000))
    assert p.enqueue_marker(HangUp()) is None
    assert p.enqueue_marker(Transfer((("parameter1", "default"),))) == END_QUEUED
    assert p.enqueue_marker(Mark("still fine")) is None
    p.clear(T)
    assert p.enqueue_marker(Transfer((("parameter1", "default"),))) is None


def test_timed_audio_waits_for_its_time_and_holds_what_is_behind_it():
    """Audio queued ``not_before`` a time leaves at that time, paced or not; a marker and
    audio queued behind it wait with it, and untimed audio ahead is not joined to it."""
    for settings in (PlayoutSettings(lead_ms=300, clip_ms=200), PlayoutSettings(paced=False)):
        p = Playout(settings, RATE)
        ahead, timed, behind = _pcm(20, 1), _pcm(100, 2), _pcm(20, 3)
        p.enqueue_audio(ahead)
        p.enqueue_audio(timed, not_before=T + 0.5)
        p.enqueue_marker(Mark("m"))
        p.enqueue_audio(behind)
        assert p.pump(T) == ([ReleasedAudio(ahead, 0)], pytest.approx(0.5))
        assert p.pump(T + 0.4999) == ([], pytest.approx(0.0001))
        released, _ = p.pump(T + 0.5)
        rest = [ReleasedMarker(Mark("m"), heard_samples=1920), ReleasedAudio(behind, 1920)]
        if settings.paced:  # the marker waits for the timed audio to play out
            assert released == [ReleasedAudio(timed, 320)]
            assert p.pump(T + 0.6) == (rest, None)
        else:  # unpaced, sent counts as played
            assert released == [ReleasedAudio(timed, 320), *rest]


def test_timed_audio_already_due_or_behind_playing_audio_keeps_the_queue_order():
    """A time already past changes nothing; a time before the audio ahead has played lets
    the queue's own pacing decide (the clip queues behind it, it never jumps ahead)."""
    p = Playout(PlayoutSettings(lead_ms=0, clip_ms=200), RATE)
    first, timed = _pcm(200, 1), _pcm(200, 2)
    p.enqueue_audio(first)
    p.enqueue_audio(timed, not_before=T + 0.1)
    assert p.pump(T) == ([ReleasedAudio(first, 0)], pytest.approx(0.2))
    assert p.pump(T + 0.2) == ([ReleasedAudio(timed, 3200)], None)


def test_clear_discards_timed_audio_not_yet_sent():
    """A clear drops interruptible timed audio like any other, and returns its bytes."""
    budget = AudioBudget(1 << 20)
    p = Playout(PlayoutSettings(), RATE, budget)
    p.enqueue_audio(_pcm(100), not_before=T + 5)
    cleared = p.clear(T)
    assert cleared.dropped_samples == 1600
    assert p.pump(T + 6) == ([], None)
    assert (p.held_bytes, budget.used) == (0, 0)
