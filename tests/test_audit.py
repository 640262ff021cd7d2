"""``audit``: one call rebuilt from its records; pure timeline tests, then one real call."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from PIL import Image
from test_end_to_end import (
    RATE,
    in_twisted,
    known_audio,
    node_config,
    running_bot,
    running_node,
    simulate,
    url_of,
)

from gateway.audit import files, reading
from gateway.audit.command import write_call
from gateway.audit.timeline import build
from gateway.bot.echo_logic import EchoPolicy
from gateway.core.wav import decode_wav, encode_wav
from gateway.proto.knowlarity.gateway.v1 import inbound_pb2, outbound_pb2

R = 8000  # the hand-built calls' rate: 20 ms is 160 samples
T = 1_700_000_000_000_000  # the hand-built calls' clock origin, microseconds


def ms(n: float) -> int:
    return int(n * 1000)


class Call:
    """Hand-built records of one call, record_seq counted as a node counts it."""

    def __init__(self, started_at_us: int = T) -> None:
        self.inbound: list[inbound_pb2.InboundRecord] = []
        self.outbound: list[outbound_pb2.OutboundRecord] = []
        self.add(started_at_us, started=inbound_pb2.CallStarted(sample_rate=R, caller="100"))

    def add(self, at_us: int, **body: object) -> None:
        self.inbound.append(inbound_pb2.InboundRecord(
            call_id="c1", node_id="n1", time_unix_us=at_us, record_seq=len(self.inbound),
            **body))

    def audio(self, position: int, pcm: bytes, received_us: int) -> None:
        self.add(received_us, audio=inbound_pb2.CallerAudio(
            media_position_samples=position, pcm=pcm, received_unix_us=received_us,
            sample_rate=R))

    def clip(self, position: int, pcm: bytes, sent_us: int) -> None:
        self.outbound.append(outbound_pb2.OutboundRecord(
            call_id="c1", node_id="n1", sent_unix_us=sent_us,
            audio=outbound_pb2.AudioSent(pcm=pcm, sample_rate=R,
                                         media_position_samples=position)))

    def end(self, at_us: int) -> None:
        self.add(at_us, ended=inbound_pb2.CallEnded(
            reason=inbound_pb2.END_REASON_CALLER_HANGUP, duration_ms=(at_us - T) // 1000))


def tone(samples: int, level: int = 8000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-level, level, samples, dtype=np.int16).astype("<i2").tobytes()


def silence(samples: int) -> bytes:
    return bytes(2 * samples)


def test_caller_audio_lands_bit_exact_at_its_positions() -> None:
    """Caller PCM is copied bit for bit to the left channel at t0 + position, t0 pinned by
    the least delayed chunk (a late chunk does not move the clock)."""
    c = Call()
    chunks = [tone(160, seed=k) for k in range(3)]
    for k, pcm in enumerate(chunks):
        late = ms(35) if k == 1 else 0  # jitter: chunk 1 arrived 35 ms late
        c.audio(160 * k, pcm, T + ms(20) + ms(20) * k + late)
    t = build(c.inbound, c.outbound)
    assert t.caller_offset == 160  # t0 = first received (20 ms) - position 0, after started
    assert t.left[160:640].tobytes() == b"".join(chunks)
    assert not t.left[:160].any()
    assert not t.right.any()


def test_bot_clips_queue_behind_each_other_from_their_sent_time() -> None:
    """A clip starts at max(its sent time, the end of the clip before): the provider's
    playback queue."""
    c = Call()
    c.audio(0, silence(160), T)
    a, b, d = tone(800, seed=1), tone(400, seed=2), tone(160, seed=3)
    c.clip(0, a, T + ms(100))  # 100 ms of audio, plays 100-200 ms
    c.clip(800, b, T + ms(150))  # sent while a still plays: queued, 200-250 ms
    c.clip(1200, d, T + ms(500))  # the queue is empty by then: at its sent time
    t = build(c.inbound, c.outbound)
    assert [(k.start, k.end) for k in t.clips] == [(800, 1600), (1600, 2000), (4000, 4160)]
    assert t.right[800:2000].tobytes() == a + b
    assert t.right[4000:4160].tobytes() == d
    assert not t.right[:800].any() and not t.right[2000:4000].any()


def test_loss_notes_leave_silent_gaps_listed_in_the_summary() -> None:
    """Caller audio lost to a RecordsDropped and bot clips lost to an OutboundDropped stay
    silent, the bot's queue keeps their length, and both gaps and notes are listed."""
    c = Call()
    c.audio(0, tone(160, seed=1), T)
    # the chunk at 160 never reached the broker; the note takes its record_seq, 2
    c.add(T + ms(60), dropped=inbound_pb2.RecordsDropped(
        records=1, first_record_seq=2, last_record_seq=2, audio_chunks=1))
    c.audio(320, tone(160, seed=3), T + ms(40))
    c.clip(0, tone(160, seed=4), T)
    c.outbound.append(outbound_pb2.OutboundRecord(
        call_id="c1", sent_unix_us=T + ms(30),
        dropped=outbound_pb2.OutboundDropped(records=1, audio_clips=1)))
    c.clip(320, tone(160, seed=5), T + ms(10))  # the clip at 160 was lost
    t = build(c.inbound, c.outbound)
    assert not t.left[160:320].any()
    assert t.clips[1].start == 320  # behind the first clip and the lost one's 160 samples
    s = t.summary()
    assert s["lost"] == [{"side": "caller", "why": "lost", "start_s": 0.02, "end_s": 0.04},
                         {"side": "bot", "why": "lost", "start_s": 0.02, "end_s": 0.04}]
    assert [n["kind"] for n in s["loss_notes"]] == ["dropped_outbound", "dropped"]


def test_turn_latency_is_end_of_caller_speech_to_next_bot_audio() -> None:
    """Two caller turns answered 300 ms and 100 ms after the caller stopped: p50 200 ms,
    p95 290 ms (linear between the two); talk time counts 20 ms windows of speech; the
    clear and marks are listed."""
    c = Call()
    caller = tone(ms(0.4) * R // 1000) + silence(R * 11 // 10) \
        + tone(R * 4 // 10, seed=1) + silence(R * 6 // 10)  # speech 0-0.4 s and 1.5-1.9 s
    for k in range(0, len(caller) // 2, 160):
        c.audio(k, caller[2 * k:2 * k + 320], T + k * 1_000_000 // R)
    c.clip(0, tone(R // 5, seed=2), T + ms(700))  # 0.7-0.9 s: 300 ms after 0.4 s
    c.clip(R // 5, tone(R // 5, seed=3), T + ms(2000))  # 2.0-2.2 s: 100 ms after 1.9 s
    c.add(T + ms(2100), playback=inbound_pb2.PlaybackEvent(
        kind=inbound_pb2.PLAYBACK_EVENT_KIND_CLEARED, samples=800))
    c.add(T + ms(2100), playback=inbound_pb2.PlaybackEvent(
        kind=inbound_pb2.PLAYBACK_EVENT_KIND_MARK_CLEARED, mark_name="m1", heard_ms=100))
    c.end(T + ms(2500))
    t = build(c.inbound, c.outbound)
    s = t.summary()
    assert [(x["caller_end_s"], x["bot_start_s"], x["latency_ms"]) for x in s["turns"]] == [
        (0.4, 0.7, 300.0), (1.9, 2.0, 100.0)]
    assert s["turn_latency_ms"] == {"p50": 200.0, "p95": 290.0}
    assert s["talk_s"] == {"caller": 0.8, "bot": 0.4}
    assert s["end"]["reason"] == "caller_hangup"
    assert s["duration_s"] == 2.5
    assert [b["samples"] for b in s["barge_ins"]] == [800]
    assert s["marks"] == [{"at_s": 2.1, "kind": "mark_cleared", "label": "m1", "heard_ms": 100}]


def test_files_hold_the_timeline(tmp_path: Path) -> None:
    """The WAV is stereo (caller left, bot right), the JSON is the summary, the PNG opens,
    and the HTML page embeds both with the ids a browser test looks for."""
    c = Call()
    c.audio(0, tone(1600), T)
    c.clip(0, tone(800, seed=1), T + ms(100))
    c.end(T + ms(400))
    t = build(c.inbound, c.outbound)
    paths = {p.suffix: p for p in write_call(t, tmp_path)}
    with wave.open(str(paths[".wav"])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, R)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.array_equal(frames[0::2], t.left) and np.array_equal(frames[1::2], t.right)
    assert json.loads(paths[".json"].read_text()) == json.loads(json.dumps(t.summary()))
    assert Image.open(paths[".png"]).size[0] == files.WIDTH
    page = paths[".html"].read_text()
    for needle in ('id="timeline"', 'id="player"', 'id="summary"', "data:image/png;base64,",
                   "data:audio/wav;base64,"):
        assert needle in page


def test_partition_is_kafkas_default() -> None:
    """The partition of a key is the one aiokafka's default partitioner picks."""
    keys = [f"call-{i}".encode() for i in range(30)]
    for n in (1, 3, 7):
        parts = list(range(n))
        assert [reading.partition_of(k, n) for k in keys] == [
            DefaultPartitioner()(k, parts, parts) for k in keys]


# More than the 300 ms greeting, so the echo is not queued behind it; long enough that
# echo is still sent the meter's 500 ms hangover after the caller stops: one turn.
ECHO_DELAY_MS = 800


@pytest.mark.broker
@in_twisted
async def test_a_real_call_is_rebuilt_from_the_bus(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    """A call through a node and the echo bot: the left channel is the caller's PCM bit for
    bit, the right is what the caller heard, the echo sits the bot's delay (within 20 ms)
    after the caller's audio, the turns are the node's own, and the JSON
    is the timeline the PNG was drawn from."""
    sent = known_audio(1.6, seed=7)
    wav_in = tmp_path / "in.wav"
    wav_in.write_bytes(encode_wav(sent, RATE))
    policy = EchoPolicy(echo_delay_ms=ECHO_DELAY_MS, silence_hangup_s=0, max_call_s=0)
    async with running_node(node_config(kafka_bootstrap, topic_prefix)) as node, \
            running_bot(kafka_bootstrap, topic_prefix, policy):
        result = await simulate(url_of(node), [
            "--audio", str(wav_in), "--seconds", "1.6", "--linger-s", "2.5",
            "--out", str(tmp_path)])
    (call,) = result["calls"]
    call_id = call["call_id"]
    heard, _ = decode_wav((tmp_path / f"{call_id}.heard.wav").read_bytes())

    got = await reading.fetch_call(kafka_bootstrap, topic_prefix, call_id, since_us=None,
                                   lookback_s=600)
    t = build(got.inbound, got.outbound)
    # The call has ended (no longer on the state topic): read from its start as the
    # calls.started topic gives it, less a second, not from the 600 s lookback.
    assert got.since_us == t.start["time_unix_us"] - 1_000_000
    first, last = t.caller_offset, t.caller_offset + len(sent) // 2
    assert t.left[first:last].tobytes() == sent
    assert not t.left[:first].any() and not t.left[last:].any()
    assert b"".join(t.right[c.start:c.end].tobytes() for c in t.clips) == heard
    greeting = len(heard) // 2 - len(sent) // 2
    (echo,) = [c for c in t.clips if c.media_position_samples == greeting]
    echo_ms = (echo.start - t.caller_offset) / RATE * 1000
    # The bot holds each chunk its delay from when the node received it, so what is left
    # is the command's way back through the bus; the issue allows 20 ms.
    print(f"echo placed {echo_ms - ECHO_DELAY_MS:+.1f} ms from the bot's delay")
    assert echo_ms == pytest.approx(ECHO_DELAY_MS, abs=20)
    # The provider's queue: no clip starts before the one ahead of it in the bot's stream
    # has played, so every echoed chunk keeps at least its distance from the first.
    for c in t.clips[t.clips.index(echo):]:
        assert c.start - echo.start >= c.media_position_samples - greeting
    assert t.end is not None and t.end["reason"] == "caller_hangup"

    rows = await reading.list_calls(kafka_bootstrap, topic_prefix, got.since_us)
    assert [(r.call_id, r.end_reason, r.node_id) for r in rows] == [
        (call_id, "caller_hangup", "n1")]

    paths = {p.suffix: p for p in write_call(t, tmp_path / "audit")}
    summary = json.loads(paths[".json"].read_text())
    assert summary == json.loads(json.dumps(t.summary()))
    assert len(summary["turns"]) == len(t.turns) == t.end["node_turns"] >= 1
    # The node's own meter, run again on the bus: the node's live figures.
    assert [round(x.latency_ms) for x in t.turns] == pytest.approx(
        t.end["node_turn_latency_ms"], abs=2)
    assert summary["talk_s"]["caller"] == pytest.approx(1.6, abs=0.05)
    assert Image.open(io.BytesIO(paths[".png"].read_bytes())).size[0] == files.WIDTH


def test_a_long_call_s_page_plays_the_wav_beside_it(tmp_path: Path) -> None:
    """Over the embedding bound the page links ``ID.wav`` instead of carrying it (a third
    larger again in base64); under it the page stays self-contained."""
    c = Call()
    c.audio(0, tone(1600), T)
    c.end(T + ms(400))
    t = build(c.inbound, c.outbound)
    wav_size = len(files.wav(t))
    small = {p.suffix: p for p in write_call(t, tmp_path / "a", embed_max_bytes=wav_size)}
    assert "data:audio/wav;base64," in small[".html"].read_text()
    big = {p.suffix: p for p in write_call(t, tmp_path / "b", embed_max_bytes=wav_size - 1)}
    page = big[".html"].read_text()
    assert "data:audio/wav;base64," not in page
    assert 'id="player" controls src="c1.wav"' in page
    assert big[".wav"].name == "c1.wav" and big[".wav"].parent == big[".html"].parent
