"""The ``replay`` command line: place a recorded call again, as the provider would.

Reads the call from ``<prefix>.calls.inbound`` (``gateway.replay.reading``),
sends its recorded start message naming ``<call id>-replay-<attempt>``, then
its caller audio at the pace it was received (gaps kept), collects what the
gateway plays back, and hangs up ``--linger-s`` after the audio. Then it reads
the replay's own ``ended`` record to set its turn latencies beside the
original's.

Exit status: 0 when the replay connected and ended as caller_hangup,
bot_hangup or transferred; 1 otherwise (or the recorded call was not found);
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from gateway.core import knowlarity
from gateway.core.errors import ProtocolError
from gateway.kafka_access import (
    ACCESS_SETTINGS,
    AccessError,
    KafkaAccess,
    client_options,
    explained,
    target,
)
from gateway.replay import reading
from gateway.settings import (
    DEFAULT_KAFKA,
    DEFAULT_TOPIC_PREFIX,
    KAFKA,
    TOPIC_PREFIX,
    Setting,
    SettingError,
    add_settings,
    as_argv,
    boolean,
    from_args,
    nested,
    non_negative,
    positive,
    with_defaults,
)
from gateway.simulator.command import DEFAULT_URL
from gateway.simulator.model import CallOptions, CallResult

__all__ = ["REPLAY_SETTINGS", "ReplaySettings", "add_arguments", "run"]


def _ws_url(text: str) -> str:
    from gateway.simulator.command import _ws_url as check

    return check(text)


def _call_id(text: str) -> str:
    """Empty is refused by ``run`` (a default must parse); else a call id as the codec has it."""
    if text:
        try:
            knowlarity.check_call_id(text)
        except ProtocolError as e:
            raise ValueError(e.reason) from None
    return text


@dataclass(frozen=True)
class ReplaySettings:
    kafka: str = DEFAULT_KAFKA
    kafka_access: KafkaAccess = KafkaAccess()
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    call_id: str = ""
    url: str = DEFAULT_URL
    lookback_s: float = 24 * 3600.0
    attempt: int = 1
    linger_s: float = 2.0
    wait_s: float = 30.0
    insecure: bool = False
    json: bool = False


REPLAY_SETTINGS: tuple[Setting, ...] = with_defaults((
    KAFKA,
    *nested(ACCESS_SETTINGS, "kafka_access"),
    TOPIC_PREFIX,
    Setting("call_id", "KGW_REPLAY_CALL_ID", None, "the recorded call to place again",
            _call_id),
    Setting("url", "KGW_REPLAY_URL", None, "gateway WebSocket URL, ws:// or wss://", _ws_url),
    Setting("lookback_s", "KGW_REPLAY_LOOKBACK_S", None,
            "how far back on the inbound topic to look for the call's started record, s",
            positive(float)),
    Setting("attempt", "KGW_REPLAY_ATTEMPT", None,
            "N in the new call id ID-replay-N; a new N for each replay of the same call",
            positive(int)),
    Setting("linger_s", "KGW_REPLAY_LINGER_S", None,
            "after the recorded audio, wait this long for bot audio before hanging up",
            non_negative(float)),
    Setting("wait_s", "KGW_REPLAY_WAIT_S", None,
            "how long to wait for the replay's ended record (its turn latencies); 0: skip",
            non_negative(float)),
    Setting("insecure", "KGW_REPLAY_INSECURE", None,
            "do not verify the gateway's TLS certificate", boolean),
    Setting("json", "KGW_REPLAY_JSON", None,
            "print one JSON object with the replay's result as the last line", boolean),
), ReplaySettings())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``replay`` options to ``parser``."""
    parser.description = (
        "Place a recorded call again against a gateway: its start message under a new call "
        "id, its caller audio paced as received; compare turn latencies."
    )
    add_settings(parser, REPLAY_SETTINGS)


def run(args: argparse.Namespace) -> int:
    """Replay the call ``args`` name, print the report and return the exit status."""
    try:
        settings: ReplaySettings = from_args(ReplaySettings(), REPLAY_SETTINGS, args)
        client_options(settings.kafka_access)  # the files exist and the combination works
    except (SettingError, AccessError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 2
    if not settings.call_id:
        print("replay: name the recorded call: --call-id / KGW_REPLAY_CALL_ID", file=sys.stderr)
        return 2
    import txaio

    if txaio.using_twisted:
        return _run_in_child(args)
    try:
        summary = asyncio.run(replay(settings))
    except (reading.CallNotFound, ValueError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        print(f"replay: Kafka at {settings.kafka}: {error}", file=sys.stderr)
        return 1
    print(_report(summary), flush=True)
    if settings.json:
        print(json.dumps(summary))
    return 0 if summary["ok"] else 1


async def replay(settings: ReplaySettings) -> dict[str, Any]:
    """Read, place, compare; the JSON-ready summary. Raises CallNotFound or ValueError."""
    from gateway.simulator import client  # Autobahn on asyncio: here only

    kafka = target(settings.kafka, settings.kafka_access)
    original = await explained(kafka, lambda: reading.read_call(
        kafka, settings.topic_prefix, settings.call_id,
        since_unix_s=time.time() - settings.lookback_s))
    new_id = f"{settings.call_id}-replay-{settings.attempt}"
    try:
        start = knowlarity.start_with_call_id(original.started.started.raw_start_message, new_id)
    except ProtocolError as e:
        raise ValueError(f"the recorded start message of {settings.call_id}: {e.reason}") from None
    frames, offsets = _paced(original.audio)
    options = CallOptions(sample_rate=original.sample_rate, call_id=new_id,
                          start_message=start, linger=settings.linger_s,
                          frames=frames, frame_offsets_s=offsets,
                          verify_tls=not settings.insecure)
    placed_at = time.time()
    result = await client.place_call(settings.url, options)
    replayed = None
    if settings.wait_s > 0 and result.connected:
        try:
            replayed = await reading.read_call(
                kafka, settings.topic_prefix, new_id,
                since_unix_s=placed_at - 5, wait_s=settings.wait_s)
        except reading.CallNotFound:
            replayed = None
    return _summary(original, result, replayed)


def _paced(audio: tuple[tuple[int, bytes], ...]) -> tuple[list[bytes], list[float]]:
    """Frames and their send offsets (s, from the first), by received time, never going
    back (a wall clock stepped back on the node)."""
    frames, offsets, last = [], [], 0.0
    first = audio[0][0] if audio else 0
    for received_us, pcm in audio:
        if not pcm:
            continue
        last = max(last, (received_us - first) / 1e6)
        frames.append(pcm)
        offsets.append(last)
    return frames, offsets


def _turns(call: reading.RecordedCall | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {"turns": call.turns, "turn_latency_ms": list(call.turn_latency_ms)}


def _summary(original: reading.RecordedCall, result: CallResult,
             replayed: reading.RecordedCall | None) -> dict[str, Any]:
    return {
        "call_id": result.call_id,
        "original_call_id": original.call_id,
        "ok": result.ok,
        "ended": result.ended,
        "error": result.error,
        "frames_sent": result.frames_sent,
        "audio_sent_ms": round(result.audio_sent_ms, 3),
        "audio_heard_ms": round(result.audio_received_ms, 3),
        "original_records_dropped": original.records_dropped,
        "original": _turns(original),
        "replay": _turns(replayed),
    }


def _report(s: dict[str, Any]) -> str:
    def turns(t: dict[str, Any] | None) -> str:
        if t is None:
            return "unknown (no ended record read)"
        return f"{t['turns']} turn(s), latencies ms {t['turn_latency_ms']}"

    lines = [
        f"replayed {s['original_call_id']} as {s['call_id']}: {s['ended']}"
        + (f" ({s['error']})" if s["error"] else ""),
        f"audio sent {s['audio_sent_ms'] / 1000:.2f} s in {s['frames_sent']} frame(s), "
        f"heard {s['audio_heard_ms'] / 1000:.2f} s",
        f"original: {turns(s['original'])}",
        f"replay:   {turns(s['replay'])}",
    ]
    if s["original_records_dropped"]:
        lines.append(f"the original lost {s['original_records_dropped']} record(s) before "
                     "Kafka: its audio has holes")
    return "\n".join(lines)


def _run_in_child(args: argparse.Namespace) -> int:
    """Run the same command in a fresh interpreter: Autobahn here is already on Twisted."""
    argv = as_argv(args, REPLAY_SETTINGS)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "gateway.replay", *argv], env=env)
