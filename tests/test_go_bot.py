"""The Go example bot (examples/go-echo-bot) against a real node and broker.

It proves the schemas and the documented topics, keys and headers are enough
for a bot in another language: the bot is built from source with the Go
toolchain (a missing toolchain fails the test, never skips it), runs as its
own process, and echoes a simulated call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_end_to_end import (
    RATE,
    in_twisted,
    known_audio,
    node_config,
    reading,
    running_node,
    simulate,
    url_of,
)

from gateway.core import model as m
from gateway.core.wav import decode_wav, encode_wav
from gateway.records import end_reason, playback_kind
from gateway.testing import InboundReader

pytestmark = pytest.mark.broker

BOT_DIR = Path(__file__).resolve().parent.parent / "examples" / "go-echo-bot"


@pytest.fixture(scope="module")
def go_bot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bot's binary, built from the committed sources and go.sum (no network if the
    module cache is warm: .ci/run runs `go mod download` first)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain (go) is not on PATH; tests/test_go_bot.py needs it")
    out = tmp_path_factory.mktemp("go-bot") / "go-echo-bot"
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    build = subprocess.run([go, "build", "-o", str(out), "."], cwd=BOT_DIR, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"go build failed:\n{build.stdout}{build.stderr}"
    return out


@contextlib.asynccontextmanager
async def running_go_bot(binary: Path, bootstrap: str, prefix: str, *extra: str,
                         env: dict[str, str] | None = None) -> AsyncIterator[list[str]]:
    """Start the bot; yield (once it holds partitions) the log lines it has written so far,
    a list that keeps growing; on exit SIGTERM it and wait for a clean stop."""
    proc = await asyncio.create_subprocess_exec(
        str(binary), "--kafka", bootstrap, "--topic-prefix", prefix, "--group", prefix + "-go",
        *extra, env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    ready = asyncio.Event()

    async def drain() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            lines.append(raw.decode(errors="replace").rstrip())
            if "event=ready" in lines[-1]:
                ready.set()

    reader = asyncio.ensure_future(drain())
    try:
        try:
            await asyncio.wait_for(ready.wait(), 60)
        except TimeoutError:
            pytest.fail("the Go bot never got partitions:\n" + "\n".join(lines))
        yield lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        await asyncio.wait_for(reader, 10)
        assert code == 0, f"the Go bot exited {code}:\n" + "\n".join(lines)


@in_twisted
async def test_go_bot_echoes_the_caller_bit_exact(
        kafka_bootstrap: str, topic_prefix: str, go_bot: Path, tmp_path: Path) -> None:
    """The Go echo bot, in a consumer group on the inbound topic, sends each caller chunk
    back as PlayAudio to the call's reply topic, and the caller hears exactly its own PCM."""
    sent = known_audio(1.6, seed=7)
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(sent, RATE))
    async with running_node(node_config(kafka_bootstrap, topic_prefix)) as node, \
            running_go_bot(go_bot, kafka_bootstrap, topic_prefix) as bot_log, \
            reading(InboundReader(kafka_bootstrap, topic_prefix)) as inbound:
        result = await simulate(url_of(node), [
            "--audio", str(wav), "--seconds", "1.6", "--linger-s", "2.5", "--out", str(tmp_path)])
        (call,) = result["calls"]
        call_id = call["call_id"]
        assert call["ended"] == "caller_hangup"

        heard, heard_rate = decode_wav((tmp_path / f"{call_id}.heard.wav").read_bytes())
        assert heard_rate == RATE
        assert len(heard) == len(sent), "\n".join(bot_log)
        assert heard == sent

        await inbound.wait_for(lambda r: r.ended(call_id) is not None)
        recs = inbound.by_call[call_id]
        assert end_reason(recs[-1]) is m.EndReason.CALLER_HANGUP
        assert not [r for r in recs if r.WhichOneof("body") == "command_rejected"]
        assert not [r for r in recs if r.WhichOneof("body") == "playback"
                    and playback_kind(r) is m.PlaybackKind.AUDIO_DROPPED]
    assert any(f"call_id={call_id}" in line and "event=call_started" in line
               for line in bot_log), "\n".join(bot_log)


@in_twisted
async def test_go_bot_echoes_on_sasl_ssl(topic_prefix: str, go_bot: Path, tmp_path: Path) -> None:
    """The same bot with the gateway's access settings (SCRAM-SHA-512 over TLS, the
    password from the environment) on the local broker's SASL_SSL listener."""
    from dataclasses import replace

    from test_kafka_security import scram

    from gateway.localkafka import LocalKafka
    from gateway.localkafka.secure import USER

    sent = known_audio(1.0, seed=3)
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(sent, RATE))
    with LocalKafka(secure=True) as kafka:
        s = kafka.secure_listener
        assert s is not None
        config = replace(node_config(s.bootstrap, topic_prefix), kafka_access=scram(s))
        async with running_node(config) as node, running_go_bot(
                go_bot, s.bootstrap, topic_prefix, "--kafka-security-protocol", "SASL_SSL",
                "--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", USER,
                "--kafka-ssl-ca-file", str(s.ca_file),
                env={"KGW_KAFKA_SASL_PASSWORD": s.password}):
            result = await simulate(url_of(node), [
                "--audio", str(wav), "--seconds", "1.0", "--linger-s", "2", "--out",
                str(tmp_path)])
        (call,) = result["calls"]
        heard, _ = decode_wav((tmp_path / f"{call['call_id']}.heard.wav").read_bytes())
        assert heard == sent
