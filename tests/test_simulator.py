"""The Knowlarity simulator (gateway.simulator) against small fake gateways on real sockets.

Autobahn serves one framework per process (txaio), the gateway's own tests run
it on Twisted, and the simulator runs it on asyncio. So every scenario that
opens a socket runs in a child process: this file run as a script, which runs
the scenarios concurrently and prints their outcomes as one JSON line for the
tests to check.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.simulator import add_arguments, run  # noqa: E402
from gateway.simulator.audio import build_frames, speech_like  # noqa: E402

RATE = 16000
FRAME_BYTES = RATE * 20 // 1000 * 2


SCENARIOS = ("echo", "close4000", "refused", "transfer", "binary", "silent", "cli")


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """Run every socket scenario, concurrently, in one fresh interpreter; return their outcomes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, *SCENARIOS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- over sockets (in a child process) --------------------------------------------------


def test_echoed_audio_is_heard_and_bot_hang_up_ends_the_call(outcomes: dict) -> None:
    """Audio the gateway plays back is collected exactly, and its hang-up makes us close 1000."""
    out = outcomes["echo"]
    result, fake = out["result"], out["fake"]
    assert result["ended"] == "bot_hangup"
    assert result["frames_sent"] == 20  # 0.4 s of 20 ms frames
    assert result["bytes_sent"] == 20 * FRAME_BYTES
    assert result["play_frames"] == 20
    assert result["heard_pcm"] == result["sent_pcm"]
    assert len(base64.b64decode(result["sent_pcm"])) == 20 * FRAME_BYTES
    assert result["audio_received_ms"] == pytest.approx(400.0)
    assert result["events"] == ["PlayFrame"] * 20 + ["HangUpFrame"]
    assert result["time_to_first_audio_ms"] is not None
    assert fake["start"] == {"call_id": result["call_id"], "sample_rate": RATE, "shape": "json"}
    assert fake["frames"] == 20
    assert fake["close_code"] == 1000


def test_gateway_close_is_reported_with_its_code(outcomes: dict) -> None:
    """A gateway that closes the socket with 4000 ends the call as gateway_closed, code 4000."""
    result = outcomes["close4000"]["result"]
    assert result["ended"] == "gateway_closed"
    assert result["connected"] is True
    assert result["close_code"] == 4000
    assert result["close_reason"] == "start timeout"


def test_refused_connection_is_connect_failed(outcomes: dict) -> None:
    """A port nobody listens on gives connect_failed with the error, and no frames sent."""
    result = outcomes["refused"]["result"]
    assert result["ended"] == "connect_failed"
    assert result["connected"] is False
    assert "refused" in result["error"].lower()
    assert result["frames_sent"] == 0


def test_transfer_ends_the_call_with_its_parameters(outcomes: dict) -> None:
    """A transfer frame ends the call as transferred, carrying its parameters in order."""
    out = outcomes["transfer"]
    assert out["result"]["ended"] == "transferred"
    assert out["result"]["transfer_parameters"] == [["parameter1", "default"], ["queue", "7"]]
    assert out["fake"]["close_code"] == 1000


def test_binary_frames_from_the_gateway_are_counted(outcomes: dict) -> None:
    """Binary frames from the gateway violate the protocol: they are counted, not played."""
    result = outcomes["binary"]["result"]
    assert result["binary_frames"] == 2
    assert result["play_frames"] == 0
    assert result["ended"] == "bot_hangup"


def test_caller_hangs_up_after_streaming_when_the_bot_does_not(outcomes: dict) -> None:
    """With a silent gateway the caller streams every frame, then closes 1000 (caller_hangup)."""
    out = outcomes["silent"]
    assert out["result"]["ended"] == "caller_hangup"
    assert out["result"]["frames_sent"] == 5
    assert out["fake"]["frames"] == 5
    assert out["fake"]["close_code"] == 1000


def test_command_line_runs_calls_and_prints_json_last(outcomes: dict) -> None:
    """The CLI places --calls calls, writes heard WAVs, exits 0 and ends with one JSON line."""
    out = outcomes["cli"]
    assert out["status"] == 0
    report = out["json"]
    assert report["summary"]["calls"] == 2
    assert report["summary"]["completed"] == 2
    assert report["summary"]["ended"] == {"bot_hangup": 2}
    assert [c["frames_sent"] for c in report["calls"]] == [10, 10]
    assert sorted(out["heard_wavs"]) == sorted(f"{c['call_id']}.heard.wav" for c in report["calls"])
    assert out["heard_samples"] == [10 * FRAME_BYTES // 2] * 2


# --- in process, no sockets ------------------------------------------------------------


def test_generated_audio_is_deterministic_talk_with_pauses() -> None:
    """Generated audio depends only on its seed and has both loud syllables and pauses."""
    a = speech_like(RATE, 3.0, seed=1)
    assert a == speech_like(RATE, 3.0, seed=1)
    assert a != speech_like(RATE, 3.0, seed=2)
    assert len(a) == 3 * RATE * 2
    import numpy as np

    frames = np.frombuffer(a, "<i2").astype(float).reshape(-1, RATE // 50)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert (rms > 3000).sum() > 10  # talking
    assert (rms < 100).sum() > 10  # pausing


def test_frames_loop_short_audio_to_the_requested_count() -> None:
    """Audio shorter than the call is repeated, cut into equal frames, in order."""
    pcm = b"\x01\x00\x02\x00\x03\x00"
    frames = build_frames(pcm, 4, 5)
    assert frames == (b"\x01\x00\x02\x00", b"\x03\x00\x01\x00") + (
        b"\x02\x00\x03\x00",
        b"\x01\x00\x02\x00",
        b"\x03\x00\x01\x00",
    )


def test_bad_url_is_refused_before_any_call() -> None:
    """A URL that is not ws:// or wss:// makes run() return 2 without placing calls."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--url", "http://127.0.0.1:1/x"])) == 2


# --- the child side: fake gateways and scenarios ---------------------------------------


def _result_json(result) -> dict:
    out = result.to_json()
    out["heard_pcm"] = base64.b64encode(result.heard_pcm).decode()
    out["sent_pcm"] = base64.b64encode(result.sent_pcm).decode()
    out["events"] = [type(e).__name__ for e in result.events]
    return out


async def _fake_gateway(behaviour: str, hang_up_after: int):
    """Serve a fake gateway on 127.0.0.1; return (server, url, what it saw)."""
    from autobahn.asyncio.websocket import WebSocketServerFactory, WebSocketServerProtocol

    from gateway.core import knowlarity

    loop = asyncio.get_running_loop()
    seen: dict = {"frames": 0, "closed": loop.create_future()}

    class Fake(WebSocketServerProtocol):
        frames = 0

        def send_text(self, text: str) -> None:
            self.sendMessage(text.encode(), isBinary=False)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if not isBinary:
                start = knowlarity.parse_start(payload.decode(), fallback_call_id="?")
                seen["start"] = {
                    "call_id": start.call_id,
                    "sample_rate": start.sample_rate,
                    "shape": start.shape,
                }
                if behaviour == "close4000":
                    self.sendClose(code=4000, reason="start timeout")
                elif behaviour == "transfer":
                    self.send_text(
                        knowlarity.encode_transfer([("parameter1", "default"), ("queue", "7")])
                    )
                elif behaviour == "binary":
                    self.sendMessage(b"\x00\x01", isBinary=True)
                    self.sendMessage(b"\x00\x01", isBinary=True)
                    self.send_text(knowlarity.encode_hang_up())
                return
            self.frames += 1
            seen["frames"] += 1
            if behaviour == "echo":
                self.send_text(knowlarity.encode_play_audio(payload, RATE))
                if self.frames == hang_up_after:
                    self.send_text(knowlarity.encode_hang_up())

        def onClose(self, wasClean: bool, code, reason) -> None:
            seen["close_code"] = code
            if not seen["closed"].done():
                seen["closed"].set_result(None)

    factory = WebSocketServerFactory(loop=loop)
    factory.protocol = Fake
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/vaani/knowlarity/setup-call-streams", seen


async def _call_scenario(behaviour: str) -> dict:
    from gateway.simulator import CallOptions, place_call

    seconds = {"echo": 0.4, "silent": 0.1}.get(behaviour, 0.4)
    linger = 0.0 if behaviour == "silent" else 5.0
    options = CallOptions(seconds=seconds, linger=linger, sample_rate=RATE)
    if behaviour == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = await place_call(f"ws://127.0.0.1:{port}/x", options)
        return {"result": _result_json(result)}
    server, url, seen = await _fake_gateway(behaviour, hang_up_after=20)
    try:
        result = await place_call(url, options)
        await asyncio.wait_for(seen["closed"], 5)
    finally:
        server.close()
    del seen["closed"]
    return {"result": _result_json(result), "fake": seen}


async def _cli_scenario() -> dict:
    from gateway.core import wav

    server, url, _ = await _fake_gateway("echo", hang_up_after=10)
    with tempfile.TemporaryDirectory() as out:
        argv = ["--url", url, "--calls", "2", "--seconds", "0.2", "--linger-s", "5"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.simulator", *argv, "--out", out, "--json",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await proc.communicate()
        server.close()
        names = sorted(os.listdir(out))
        samples = [len(wav.decode_wav(Path(out, n).read_bytes())[0]) // 2 for n in names]
    return {
        "status": proc.returncode,
        "json": json.loads(stdout.decode().strip().splitlines()[-1]),
        "heard_wavs": names,
        "heard_samples": samples,
    }


async def _scenarios(names: list[str]) -> dict:
    runs = [_cli_scenario() if name == "cli" else _call_scenario(name) for name in names]
    return dict(zip(names, await asyncio.gather(*runs), strict=True))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_scenarios(sys.argv[1:]))))
