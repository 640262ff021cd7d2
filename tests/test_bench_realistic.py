"""The realistic bench workload (kgw_bench.realistic): script, turn-taking, stamp, callers."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.core.knowlarity import AudioContentType, encode_play_audio, parse_start
from gateway.core.resample import Converter
from kgw_bench import realistic as rl
from kgw_bench.loadgen import FRAME_BYTES, noise_template, run_load
from kgw_bench.talkbot import call_index

SEED = rl.DEFAULT_SEED
TEMPLATE = noise_template()


def _to_16k(pcm: bytes) -> bytes:
    """What the node does to a 24 kHz play command: Converter, one piece at a time."""
    conv, out = Converter(pcm, rl.TTS_RATE, rl.CALL_RATE), b""
    while not conv.done:
        out += conv.next_piece()
    return out


# --- the script ------------------------------------------------------------------


def test_the_script_repeats_for_a_seed_and_differs_between_calls_and_seeds() -> None:
    """The same (seed, call) gives the same turns; another call or seed gives others."""
    a = rl.conversation(SEED, 3, 60.0)
    assert a == rl.conversation(SEED, 3, 60.0)
    assert a != rl.conversation(SEED, 4, 60.0)
    assert a != rl.conversation(SEED + 1, 3, 60.0)


@pytest.mark.parametrize("seconds", [5.0, 20.0, 60.0, 300.0])
def test_turns_alternate_speech_and_quiet_and_leave_room_for_the_last_answer(
        seconds: float) -> None:
    """Turns follow each other; speech and answers are within bounds; every answer ends in time."""
    for call in range(50):
        turns = rl.conversation(SEED, call, seconds)
        for prev, turn in zip(turns, turns[1:], strict=False):
            assert turn.start_s == pytest.approx(prev.end_s)
        for turn in turns:
            assert rl.SPEECH_S[0] <= turn.speech_s <= rl.SPEECH_S[1]
            assert rl.UTTERANCE_S[0] <= turn.utterance_s <= rl.UTTERANCE_S[1]
            answer_at = turn.start_s + turn.speech_s + rl.ENDPOINT_S + rl.LATENCY_ALLOWANCE_S
            assert answer_at + turn.utterance_s + rl.TAIL_S <= seconds + 1e-9
            assert round(turn.utterance_s / rl.FRAME_S, 6) == round(turn.utterance_s / 0.02)


def test_about_one_turn_in_four_is_barged_in_before_the_answer_ends() -> None:
    """Barged turns: the caller speaks again while the answer plays; others wait for its end."""
    calls = [rl.conversation(SEED, call, 60.0) for call in range(200)]
    assert not any(turns[-1].barged for turns in calls)  # nothing follows to barge in with
    turns = [t for c in calls for t in c]
    barged = [t for t in turns if t.barged]
    assert 0.2 < len(barged) / len(turns) < 0.3
    for t in turns:
        answer_from = rl.ENDPOINT_S + rl.LATENCY_ALLOWANCE_S  # into the pause
        if t.barged:
            assert answer_from < t.pause_s < answer_from + t.utterance_s
        else:
            assert t.pause_s > answer_from + t.utterance_s + rl.GAP_S[0] - 0.02


def test_the_speaking_mask_marks_each_turns_speech_frames() -> None:
    """One byte per 20 ms frame: 1 inside a turn's speech, 0 elsewhere."""
    turns = (rl.Turn(0.1, 0.2, 1.0, 1.0, False), rl.Turn(1.3, 0.06, 1.0, 1.0, True))
    mask = rl.speaking(turns, 80)
    assert [i for i, v in enumerate(mask) if v] == [*range(5, 15), 65, 66, 67]


# --- the bot's decisions --------------------------------------------------------------


def _feed(taker: rl.TurnTaker, pattern: str) -> list[Any]:
    """'s' a 20 ms speech record, '.' a quiet one; the actions taken."""
    out = []
    for c in pattern:
        action = taker.audio(c == "s", 0.02)
        if action is not None:
            out.append(action)
    return out


def test_the_bot_answers_after_half_a_second_of_quiet_with_the_scripts_length() -> None:
    """A turn ends after ENDPOINT_S of quiet following speech: one Play, the script's length."""
    script = (rl.Turn(0, 1, 2, 1.5, False), rl.Turn(3, 1, 2, 2.5, False))
    taker = rl.TurnTaker(script)
    assert _feed(taker, "." * 100) == []  # quiet before anyone spoke: nothing to answer
    assert _feed(taker, "s" * 50 + "." * 24) == []
    assert _feed(taker, ".") == [rl.Play(0, 1.5, "turn-0")]
    assert _feed(taker, "." * 200) == []  # one answer per turn
    taker.mark_done("turn-0")
    assert _feed(taker, "s" * 10 + "." * 25) == [rl.Play(1, 2.5, "turn-1")]


def test_speech_while_the_answer_plays_is_a_barge_in_and_clears_it() -> None:
    """Speech before the mark is reported: Clear, once; the barging speech is the next turn."""
    taker = rl.TurnTaker((rl.Turn(0, 1, 1, 2.0, True), rl.Turn(2, 1, 1, 1.0, False)))
    _feed(taker, "s" * 10 + "." * 25)
    assert _feed(taker, "sss") == [rl.Clear("turn-0")]
    taker.mark_done("turn-0")  # the node reports the mark cleared: nothing changes
    assert _feed(taker, "." * 25) == [rl.Play(1, 1.0, "turn-1")]
    assert taker.barge_ins == 1 and taker.answered == 2


def test_speech_after_the_mark_is_reached_is_a_new_turn_not_a_barge_in() -> None:
    """Once the answer's mark is reported, caller speech starts a turn and clears nothing."""
    taker = rl.TurnTaker((rl.Turn(0, 1, 1, 1.0, False),))
    _feed(taker, "s" + "." * 25)
    taker.mark_done("turn-9")  # not this answer's mark
    assert taker.state == rl.ANSWERING
    taker.mark_done("turn-0")
    assert _feed(taker, "ss") == [] and taker.barge_ins == 0


def test_the_energy_check_ignores_the_callers_stamps() -> None:
    """A caller frame of the noise template is speech; a quiet frame with its stamp is not."""
    stamp = (time.time_ns() // 1000).to_bytes(8, "little")
    quiet = stamp + bytes(FRAME_BYTES - 8)
    assert rl.is_speech(stamp + TEMPLATE[8:])
    assert not rl.is_speech(quiet)
    assert not rl.is_speech(quiet * 5)  # an aggregated record: a stamp per frame
    assert rl.is_speech(quiet * 4 + stamp + TEMPLATE[8:])  # a turn starting in the record
    assert not rl.is_speech(b"")


def test_the_talk_bot_reads_the_call_index_from_the_campaign() -> None:
    """``bench-<i>`` names the script; anything else falls back to call 0."""
    assert call_index("bench-17") == 17
    assert call_index("") == call_index("bench-x") == call_index("other-3") == 0


# --- the answer and its stamp ----------------------------------------------------------


@pytest.mark.parametrize("seconds", [1.0, 2.34, 4.0])
def test_an_utterance_is_24_khz_whole_frames_and_speech_like(seconds: float) -> None:
    """The answer has the asked length at 24 kHz, whole 20 ms frames, loud enough to hear."""
    u = rl.utterance(seconds, 7)
    assert u.dtype == np.dtype("<i2")
    assert len(u) == round(seconds / 0.02) * 480
    assert 2000 < float(np.sqrt(np.mean(u.astype(np.float64) ** 2))) < 12000
    assert np.array_equal(u, rl.utterance(seconds, 7))
    assert not np.array_equal(u, rl.utterance(seconds, 8))


def test_the_stamp_survives_the_nodes_resampling_to_16_khz() -> None:
    """Stamped at 24 kHz, converted as the node does, the caller reads the same 32 bits back."""
    now = time.time_ns() // 1000
    for i in range(40):
        sent = now + i * 987_654_321
        pcm16 = _to_16k(rl.stamp(rl.utterance(1.0 + i * 0.07, i), sent))
        assert len(pcm16) == len(rl.stamp(rl.utterance(1.0 + i * 0.07, i), sent)) * 2 // 3
        assert rl.read_stamp(pcm16) == sent & rl.STAMP_MASK
        assert rl.read_stamp(pcm16, FRAME_BYTES * 10) is None  # not an answer's head
        assert rl.read_stamp(b"\x00\x00" * 200) is None  # too short


def test_a_damaged_stamp_is_told_from_a_missing_one() -> None:
    """The right sync with a wrong checksum reads as -1 (a bad stamp), not as a time."""
    flipped = bytearray(_to_16k(rl.stamp(rl.utterance(1.0, 1), 0)))
    sym = len(rl.SYNC) * 32  # the first stamp symbol: 0 -> 3
    flipped[sym:sym + 32] = np.full(16, 12000, "<i2").tobytes()
    assert rl.read_stamp(bytes(flipped)) == -1


def test_latency_from_a_32_bit_stamp_wraps_correctly() -> None:
    """Only the low 32 bits travel; the receive time gives the rest, across a wrap."""
    sent = (7 << 32) - 1000
    assert rl.latency_us(sent + 5000, sent & rl.STAMP_MASK) == 5000


# --- the load generator in the realistic workload ---------------------------------------


class TalkServer:
    """Answers each call's first turn, after its speech stops, with a stamped 16 kHz answer."""

    def __init__(self) -> None:
        self.campaigns: list[str] = []
        self.mismatched = 0
        self.answers = 0

    async def handler(self, ws: ServerConnection) -> None:
        start = parse_start(str(await ws.recv()), fallback_call_id="?")
        self.campaigns.append(start.provider_campaign)
        index = call_index(start.provider_campaign)
        turns = rl.conversation(SEED, index, 7.0)
        script = rl.speaking(turns, 350)
        k = 0
        answered = False
        async for msg in ws:
            if isinstance(msg, str):
                continue
            speech = rl.is_speech(msg)
            if k < len(script) and speech != bool(script[k]):
                self.mismatched += 1
            if not speech and k and script[k - 1] and not answered:
                answered = True
                pcm = _to_16k(rl.stamp(rl.utterance(1.0, k), time.time_ns() // 1000))
                for content_type in (AudioContentType.WAVE,):
                    await ws.send(encode_play_audio(pcm[:6400], 16000, content_type))
                    await ws.send(encode_play_audio(pcm[6400:], 16000, content_type))
                self.answers += 1
            k += 1


def test_realistic_callers_speak_by_their_script_and_time_each_answer() -> None:
    """Frames are speech or quiet as the script says; each answer's head gives one sample."""
    assert all(rl.conversation(SEED, i, 7.0) for i in range(2))
    server = TalkServer()

    async def scenario() -> dict[str, Any]:
        async with serve(server.handler, "127.0.0.1", 0, compression=None) as s:
            port = s.sockets[0].getsockname()[1]
            from kgw_bench.loadgen.scheduler import run
            result, _ = await run(f"ws://127.0.0.1:{port}/x", 2, 7.0, 0.0, 0.0,
                                  workload="realistic", seed=SEED)
            return result

    with ThreadPoolExecutor(1) as pool:
        r = pool.submit(asyncio.run, scenario()).result(timeout=60)
    assert sorted(server.campaigns) == ["bench-0", "bench-1"]
    assert server.mismatched == 0 and server.answers == 2
    assert r["workload"] == "realistic" and r["calls_completed"] == 2
    assert r["answers_heard"] == 2 and r["bad_stamps"] == 0
    assert r["turns_scripted"] == 2 and r["barge_ins_scripted"] == 0  # one turn each
    assert r["command_latency_ms"]["count"] == 2
    assert r["play_chunks_received"] == 2 * 50  # 1 s answers, 20 ms chunks


def test_echo_callers_send_the_noise_template_only_and_no_campaign() -> None:
    """The echo workload's calls are unchanged: every frame speech, the start without campaign."""
    frames: list[bytes] = []
    starts: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        starts.append(json.loads(str(await ws.recv())))
        async for msg in ws:
            if isinstance(msg, bytes):
                frames.append(msg)
                await ws.send(encode_play_audio(msg, 16000))

    async def scenario() -> dict[str, Any]:
        async with serve(handler, "127.0.0.1", 0, compression=None) as s:
            port = s.sockets[0].getsockname()[1]
            return await run_load(f"ws://127.0.0.1:{port}/x", calls=1, seconds=0.5, warmup=0)

    with ThreadPoolExecutor(1) as pool:
        r = pool.submit(asyncio.run, scenario()).result(timeout=60)
    assert starts[0]["campaign"] == ""
    assert len(frames) == 25 and all(f[8:] == TEMPLATE[8:] for f in frames)
    assert r["workload"] == "echo" and r["command_latency_ms"]["count"] == 25


@pytest.mark.parametrize(("answer", "reported", "played"), [
    (32000, 0, 32000),  # nothing dropped: the whole answer went out
    (32000, 32000 - 6400, 6400),  # two clips sent, the estimate exact
    (32000, 32000 - 6400 - 528, 6400),  # the resampler's held samples not in the estimate
    (32000, 40000, 0),  # more than the answer (a second one queued): none counted
    (16960, 16960 - 16000, 16000),  # the last, short clip dropped
])
def test_what_a_barged_answer_played_is_rounded_to_whole_clips(
        answer: int, reported: int, played: int) -> None:
    """Answer less the reported drop, down to whole 200 ms clips; no report: all of it."""
    assert rl.played_after_clear(answer, reported) == played


def test_the_nodes_clear_estimate_is_short_by_less_than_a_clip() -> None:
    """Converting 24 -> 16 kHz as the node does, its dropped-samples estimate after two clips
    is under the truth by less than one clip: the rounding above then gives the truth."""
    total = len(rl.utterance(3.0, 1)) * 2 // 3
    conv = Converter(rl.stamp(rl.utterance(3.0, 1), 0), rl.TTS_RATE, rl.CALL_RATE)
    out = b""
    while len(out) < 2 * rl.CLIP_SAMPLES * 2:
        out += conv.next_piece()
    sent = 2 * rl.CLIP_SAMPLES
    pending = len(out) // 2 - sent  # converted, not yet sent: the node counts it too
    estimate = conv.remaining_out_bytes // 2 + pending
    assert 0 <= (total - sent) - estimate < rl.CLIP_SAMPLES
    assert rl.played_after_clear(total, estimate) == sent
