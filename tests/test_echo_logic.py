"""The echo bot's pure decisions for one call, on a fake clock (plain floats), with no broker.

Routing records to calls, late joins, duplicates and forgetting lost calls are
the SDK's (tests/test_sdk.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gateway.bot.echo_logic import (
    SEND_AHEAD_S,
    EchoCall,
    EchoPolicy,
    PolicyError,
    chime,
    rms,
)
from gateway.core import model as m

CALL = "call-1"
REPLY = "kgw.calls.commands.node-a"
RATE = 8000
CHUNK = 160  # samples: 20 ms at 8 kHz


def level(value: int, samples: int = CHUNK) -> bytes:
    """A chunk of constant int16 ``value``: its RMS is exactly ``abs(value)``."""
    return np.full(samples, value, dtype="<i2").tobytes()


SILENT = level(0)
QUIET = level(100)  # RMS 100 = -50.3 dBFS: silence under the -45 dBFS default
SPEECH = level(1000)  # RMS 1000 = -30.3 dBFS


class _Bot:
    """One EchoCall, called as the tests read: ``on_audio(call, pcm, rate, t)``."""

    def __init__(self, policy: EchoPolicy) -> None:
        self.call = EchoCall(call_id=CALL, reply_topic=REPLY, sample_rate=RATE, policy=policy,
                             started_at=0.0, last_seen=0.0)

    def on_audio(self, call_id: str, pcm: bytes, rate: int, now: float) -> list[m.Command]:
        assert call_id == CALL
        return self.call.on_audio(pcm, rate, now)

    def tick(self, now: float) -> list[m.Command]:
        return self.call.tick(now)

    def next_due(self) -> float | None:
        return self.call.next_due()


def bot(**policy: object) -> _Bot:
    return _Bot(EchoPolicy(**policy))  # type: ignore[arg-type]


def sends(commands: list[m.Command]) -> list[m.Command]:
    return commands


def kinds(commands: list[m.Command]) -> list[str]:
    return [type(c.body).__name__ for c in commands]


def test_started_sends_greeting_chime_then_mark_to_reply_topic() -> None:
    """A started call gets a PlayAudio chime at its rate, then the greeting-done mark."""
    out = bot().call.greeting()
    assert [c.call_id for c in out] == [CALL, CALL]
    play, mark = out[0].body, out[1].body
    assert isinstance(play, m.PlayAudio)
    assert play.sample_rate == 8000
    assert len(play.pcm) == 4800  # 2 tones x 150 ms x 8000 Hz x 2 bytes
    assert mark == m.Mark(name="greeting-done")


def test_chime_is_deterministic_faded_and_at_the_rate() -> None:
    """The chime is the same bytes every time, 300 ms long, and starts and ends at zero."""
    a = chime(16000)
    assert a == chime(16000)
    assert len(a) == 9600  # 0.3 s x 16000 Hz x 2 bytes
    samples = np.frombuffer(a, dtype="<i2")
    assert samples[0] == 0
    assert abs(int(samples[-1])) < 200  # end of the fade-out
    assert abs(int(samples[2400])) < 200  # fade-in of the second tone
    assert 9000 < int(np.abs(samples).max()) <= 9830  # 0.3 of full scale


def test_greeting_comes_before_the_first_echo() -> None:
    """The commands of a call go out as greeting, mark, then echoes."""
    calls = bot()
    effects = calls.call.greeting()
    effects += calls.on_audio(CALL, SPEECH, RATE, 0.1)
    effects += calls.tick(0.4)
    assert [c.command_id for c in sends(effects)] == ["greeting", "greeting-done", "echo-0"]


def test_echo_is_the_same_bytes_at_the_call_rate() -> None:
    """An echoed chunk carries exactly the caller's bytes, even an odd trailing byte."""
    calls = bot(echo_delay_ms=0)
    pcm = bytes(range(256)) * 3 + b"\x7f"
    (cmd,) = sends(calls.on_audio(CALL, pcm, RATE, 1.0))
    assert cmd.body == m.PlayAudio(pcm=bytes(range(256)) * 3 + b"\x7f", sample_rate=8000)


def test_echo_waits_for_the_delay_on_the_fake_clock() -> None:
    """A chunk received at t=1.0 with a 300 ms delay is released at t=1.3, not before."""
    calls = bot(echo_delay_ms=300)
    assert sends(calls.on_audio(CALL, SPEECH, RATE, 1.0)) == []
    assert calls.next_due() == pytest.approx(1.3)
    assert sends(calls.tick(1.299)) == []
    assert kinds(calls.tick(1.3)) == ["PlayAudio"]
    assert calls.next_due() is None


def test_the_delay_counts_from_the_node_and_the_echo_is_timed_to_the_caller() -> None:
    """A chunk the node received at t=0.95 (read at 1.0) that starts 2 s into the caller's
    stream is sent ``SEND_AHEAD_S`` before 0.95 + 0.8 s, timed to start at 2.8 s."""
    call = EchoCall(call_id=CALL, reply_topic=REPLY, sample_rate=RATE,
                    policy=EchoPolicy(echo_delay_ms=800), started_at=0.0)
    assert call.on_audio(SPEECH, RATE, 1.0, heard_at=0.95, start_ms=2000) == []
    assert call.next_due() == pytest.approx(1.75 - SEND_AHEAD_S)
    (cmd,) = call.tick(1.75 - SEND_AHEAD_S)
    assert cmd.body == m.PlayAudio(pcm=SPEECH, sample_rate=RATE, at_caller_ms=2800)


def test_echoes_keep_the_caller_order() -> None:
    """Chunks released in one tick come out one PlayAudio each, in the order received."""
    calls = bot(echo_delay_ms=300)
    chunks = [level(1000), level(2000), level(3000)]
    for i, pcm in enumerate(chunks):
        calls.on_audio(CALL, pcm, RATE, 1.0 + i * 0.02)
    out = sends(calls.tick(2.0))
    assert [c.command_id for c in out] == ["echo-0", "echo-1", "echo-2"]
    assert [c.body.pcm for c in out] == chunks


def test_zero_delay_echoes_at_once() -> None:
    """With the delay at 0 a chunk is echoed in the same step it arrives."""
    calls = bot(echo_delay_ms=0)
    assert kinds(calls.on_audio(CALL, SPEECH, RATE, 5.0)) == ["PlayAudio"]


def test_silence_hangs_up_after_n_seconds_of_media_after_the_echo() -> None:
    """50 silent 20 ms chunks (1 s of media) decide a hang-up, sent after their echoes."""
    calls = bot(echo_delay_ms=300, silence_hangup_s=1)
    effects = []
    for i in range(49):
        effects += calls.on_audio(CALL, SILENT, RATE, i * 0.02)
    effects += calls.tick(1.5)
    assert "HangUp" not in kinds(effects)  # 0.98 s of silence is not enough
    last = calls.on_audio(CALL, QUIET, RATE, 2.0)
    assert sends(last) == []  # decided, but the last chunk's echo is still held
    out = sends(calls.tick(2.3))
    assert [c.command_id for c in out] == ["echo-49", "hangup"]
    assert out[1].body == m.HangUp()
    assert calls.call.hangup_reason == "silence"


def test_silence_is_measured_in_media_time_not_wall_time() -> None:
    """1 s of silent samples arriving at one instant hangs up; 49 chunks over 100 s do not."""
    burst = bot(echo_delay_ms=0, silence_hangup_s=1, max_call_s=0)
    out = []
    for _ in range(50):
        out += burst.on_audio(CALL, SILENT, RATE, 3.0)
    assert kinds(out)[-1] == "HangUp"

    slow = bot(echo_delay_ms=0, silence_hangup_s=1, max_call_s=0)
    out = []
    for i in range(49):
        out += slow.on_audio(CALL, SILENT, RATE, i * 2.0)
        out += slow.tick(i * 2.0 + 1.0)
    assert "HangUp" not in kinds(out)


def test_speech_resets_the_silence_count() -> None:
    """Silence interrupted by speech never adds up to a hang-up."""
    calls = bot(echo_delay_ms=0, silence_hangup_s=1, max_call_s=0)
    out = []
    for _ in range(3):
        for _ in range(40):
            out += calls.on_audio(CALL, SILENT, RATE, 1.0)
        out += calls.on_audio(CALL, SPEECH, RATE, 1.0)
    assert "HangUp" not in kinds(out)
    assert kinds(out).count("PlayAudio") == 123


@pytest.mark.parametrize(("value", "silent"), [
    (0, True),
    (100, True),  # -50.3 dBFS
    (180, True),  # -45.2 dBFS
    (190, False),  # -44.7 dBFS
    (300, False),  # -40.8 dBFS
    (-1000, False),  # -30.3 dBFS, negative samples count the same
])
def test_silence_threshold_is_rms_in_dbfs(value: int, silent: bool) -> None:
    """A chunk counts as silence when its RMS is below -45 dBFS."""
    calls = bot(echo_delay_ms=0, silence_hangup_s=0.02, max_call_s=0)
    assert ("HangUp" in kinds(calls.on_audio(CALL, level(value), RATE, 1.0))) is silent


def test_rms_of_known_signals() -> None:
    """RMS is in int16 units: a constant is its magnitude, a +-a square is a, empty is 0."""
    assert rms(level(-300)) == 300.0
    assert rms(np.array([1000, -1000] * 80, dtype="<i2").tobytes()) == 1000.0
    assert rms(b"") == 0.0
    assert rms(b"\x05") == 0.0


def test_max_call_hangs_up_after_the_echo_of_audio_already_received() -> None:
    """At 5 s wall time since start the bot hangs up, but only after echoing held audio."""
    calls = bot(echo_delay_ms=300, silence_hangup_s=0, max_call_s=5)
    assert sends(calls.on_audio(CALL, SPEECH, RATE, 4.9)) == []
    assert sends(calls.tick(4.99)) == []
    assert sends(calls.tick(5.0)) == []  # decided; the chunk from 4.9 is due at 5.2
    assert sends(calls.on_audio(CALL, SPEECH, RATE, 5.1)) == []  # not echoed: call is ending
    assert sends(calls.tick(5.19)) == []
    out = sends(calls.tick(5.21))
    assert [c.command_id for c in out] == ["echo-0", "hangup"]
    assert calls.call.hangup_reason == "max_call"


def test_max_call_with_no_audio_hangs_up_on_the_tick() -> None:
    """A call with no caller audio at all is hung up when max-call-s has passed."""
    calls = bot(max_call_s=5)
    assert kinds(calls.tick(5.0)) == ["HangUp"]


def test_hang_up_is_sent_once() -> None:
    """After the HangUp, more silence and more ticks send nothing at all."""
    calls = bot(echo_delay_ms=0, silence_hangup_s=1, max_call_s=5)
    out = []
    for i in range(60):
        out += calls.on_audio(CALL, SILENT, RATE, 0.02 * i)
    for t in (5.0, 6.0, 100.0):
        out += calls.tick(t)
    assert kinds(out) == ["PlayAudio"] * 50 + ["HangUp"]


def test_zero_disables_both_limits() -> None:
    """With silence-hangup-s and max-call-s at 0, long silence and long calls never hang up."""
    calls = bot(echo_delay_ms=0, silence_hangup_s=0, max_call_s=0)
    out = []
    for i in range(1000):
        out += calls.on_audio(CALL, SILENT, RATE, i * 0.5)
        out += calls.tick(i * 0.5 + 0.25)
    assert kinds(out) == ["PlayAudio"] * 1000


@pytest.mark.parametrize(("field", "value", "setting"), [
    ("echo_delay_ms", -1, "echo-delay-ms"),
    ("echo_delay_ms", 1.5, "echo-delay-ms"),
    ("silence_dbfs", 1.0, "silence-dbfs"),
    ("silence_hangup_s", -1.0, "silence-hangup-s"),
    ("max_call_s", float("inf"), "max-call-s"),
])
def test_bad_policy_names_the_setting(field: str, value: object, setting: str) -> None:
    """An out-of-range behaviour value fails at construction, naming the setting."""
    with pytest.raises(PolicyError) as err:
        EchoPolicy(**{field: value})  # type: ignore[arg-type]
    assert err.value.setting == setting


def test_logic_imports_no_kafka_client() -> None:
    """The pure logic module loads without pulling in aiokafka or generated protobuf code."""
    import subprocess

    code = ("import sys, gateway.bot.echo_logic; "
            "bad = [n for n in sys.modules if n.startswith('aiokafka') or n.endswith('_pb2')]; "
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
