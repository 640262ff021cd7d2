"""Secured Kafka for real: a call through a node, the echo bot, ``audit`` and ``replay``, all
on the local broker's SASL_SSL listener; wrong credentials stop each of them with a clear
message, never a hang.

The broker is this module's own (``LocalKafka(secure=True)``): clients are given only its
SASL_SSL address, so nothing here can fall back to the PLAINTEXT listener.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_end_to_end import (
    RATE,
    in_twisted,
    known_audio,
    node_config,
    running_node,
    simulate,
    url_of,
)

from gateway.audit import reading
from gateway.bot.echo import EchoBotSettings, run_echo_bot
from gateway.bot.echo_logic import EchoPolicy
from gateway.core.wav import decode_wav, encode_wav
from gateway.kafka_access import AccessError, KafkaAccess, target
from gateway.localkafka import LocalKafka
from gateway.localkafka.secure import USER, SecureListener, unsecured_token
from gateway.sdk import BotSettings

pytestmark = pytest.mark.broker

WRONG = "not-the-password-0451"


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureListener]:
    kafka = LocalKafka(secure=True)
    kafka.start()
    try:
        assert kafka.secure_listener is not None
        yield kafka.secure_listener
    finally:
        kafka.stop()


def scram(s: SecureListener, mechanism: str = "SCRAM-SHA-512") -> KafkaAccess:
    return KafkaAccess(security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                       sasl_username=USER, sasl_password_file=str(s.password_file),
                       ssl_ca_file=str(s.ca_file))


def flags(s: SecureListener, prefix: str) -> list[str]:
    """The command-line form of ``scram(s)``, minus the password (given by file or env)."""
    return ["--kafka", s.bootstrap, "--topic-prefix", prefix,
            "--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", "SCRAM-SHA-512",
            "--kafka-sasl-username", USER, "--kafka-ssl-ca-file", str(s.ca_file)]


async def run_command(args: list[str], env: dict[str, str] | None = None
                      ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


@in_twisted
async def test_a_call_end_to_end_on_sasl_ssl(secure: SecureListener, topic_prefix: str,
                                             tmp_path: Path) -> None:
    """Node and echo bot on SCRAM-SHA-512 over TLS: the caller hears its echo; ``audit``
    (password from a file) rebuilds the caller's side bit for bit; ``replay`` (password
    from the environment) places it again, and its caller audio is the original's."""
    sent = known_audio(1.2, seed=3)
    wav_in = tmp_path / "in.wav"
    wav_in.write_bytes(encode_wav(sent, RATE))
    access = scram(secure)
    config = replace(node_config(secure.bootstrap, topic_prefix), kafka_access=access)
    bot = EchoBotSettings(
        bot=BotSettings(kafka=secure.bootstrap, kafka_access=access, topic_prefix=topic_prefix,
                        group_id=topic_prefix + "-bot"),
        policy=EchoPolicy(echo_delay_ms=100, silence_hangup_s=0, max_call_s=0))
    ready, stop = asyncio.Event(), asyncio.Event()
    async with running_node(config) as node:
        bot_task = asyncio.ensure_future(run_echo_bot(bot, ready=ready, stop=stop))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            result = await simulate(url_of(node), [
                "--audio", str(wav_in), "--seconds", "1.2", "--linger-s", "1.5",
                "--out", str(tmp_path)])
            (call,) = result["calls"]
            call_id = call["call_id"]
            heard, _ = decode_wav((tmp_path / f"{call_id}.heard.wav").read_bytes())
            assert sent in heard  # the echo, after the greeting

            status, out, err = await run_command(
                ["audit", *flags(secure, topic_prefix), "--call-id", call_id,
                 "--kafka-sasl-password-file", str(secure.password_file),
                 "--out", str(tmp_path / "audit")])
            assert status == 0, err
            with wave.open(str(tmp_path / "audit" / f"{call_id}.wav")) as w:
                frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            assert sent in frames[0::2].tobytes()

            status, out, err = await run_command(
                ["replay", *flags(secure, topic_prefix), "--call-id", call_id,
                 "--url", url_of(node), "--linger-s", "1", "--wait-s", "20", "--json"],
                env={"KGW_KAFKA_SASL_PASSWORD": secure.password})
            assert status == 0, out + err
            new_id = json.loads(out.strip().splitlines()[-1])["call_id"]
        finally:
            stop.set()
            await asyncio.wait_for(bot_task, 30)
    got = await reading.fetch_call(target(secure.bootstrap, access), topic_prefix, new_id,
                                   since_us=None, lookback_s=600, outbound=False)
    replayed = b"".join(r.audio.pcm for r in got.inbound if r.WhichOneof("body") == "audio")
    assert replayed == sent


@in_twisted
async def test_wrong_credentials_stop_every_client_with_a_clear_error(
        secure: SecureListener, topic_prefix: str, tmp_path: Path) -> None:
    """A wrong password: the node's start, the bot and ``audit`` each fail at once saying
    the broker refused the credentials, and the password shows in no output."""
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text(WRONG)
    access = replace(scram(secure), sasl_password_file=str(wrong_file))
    config = replace(node_config(secure.bootstrap, topic_prefix), kafka_access=access)
    from twisted.internet import reactor

    from gateway.node import Node

    node = Node(config, reactor)
    with pytest.raises(AccessError, match="refused the credentials"):
        await asyncio.wait_for(node.start(), 30)
    await node.shutdown()

    bot = EchoBotSettings(bot=BotSettings(kafka=secure.bootstrap, kafka_access=access,
                                          topic_prefix=topic_prefix, group_id="g"))
    with pytest.raises(AccessError, match="refused the credentials"):
        await asyncio.wait_for(run_echo_bot(bot), 30)

    status, out, err = await run_command(
        ["audit", *flags(secure, topic_prefix), "--list"], env={"KGW_KAFKA_SASL_PASSWORD": WRONG})
    assert status == 1
    assert "refused the credentials" in err
    assert WRONG not in out + err

    status, out, err = await run_command(
        ["serve", *flags(secure, topic_prefix), "--listen", "tcp:0:interface=127.0.0.1",
         "--metrics-listen", "", "--node-id", "wrong"],
        env={"KGW_KAFKA_SASL_PASSWORD": WRONG})
    assert status == 1
    assert "refused the credentials" in out + err
    assert WRONG not in out + err


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "OAUTHBEARER"])
@in_twisted
async def test_every_mechanism_reaches_the_broker(secure: SecureListener, topic_prefix: str,
                                                  tmp_path: Path, mechanism: str) -> None:
    """PLAIN, SCRAM-SHA-256 and OAUTHBEARER (a token file, read when the client asks) each
    read the bus: ``list_calls`` of an empty prefix answers with no calls, not an error."""
    if mechanism == "OAUTHBEARER":
        token = tmp_path / "token"
        token.write_text(unsecured_token())
        access = KafkaAccess(security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                             oauth_token_file=str(token), ssl_ca_file=str(secure.ca_file))
    else:
        access = scram(secure, mechanism)
    kafka = target(secure.bootstrap, access)
    from gateway.kafka.bus import ensure_topics

    await ensure_topics(kafka, [(f"{topic_prefix}.calls.inbound", 1, 1)])
    assert await reading.list_calls(kafka, topic_prefix, since_us=0) == []
