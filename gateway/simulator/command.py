"""The ``simulate`` command line: arguments, running the calls, the report.

Exit status: 0 when every call connected and ended as caller_hangup,
bot_hangup or transferred; 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.core import wav
from gateway.settings import (
    Setting,
    SettingError,
    add_settings,
    as_argv,
    boolean,
    choice,
    from_args,
    non_negative,
    positive,
    with_defaults,
)
from gateway.simulator.model import CallOptions, CallResult, summarize

__all__ = ["DEFAULT_URL", "SIMULATE_SETTINGS", "SimulateSettings", "add_arguments", "run"]

DEFAULT_URL = "ws://127.0.0.1:8080/vaani/knowlarity/setup-call-streams"
DEFAULT_SAMPLE_RATE = 16000
_MAX_ROWS = 20  # per-call rows in the human report; --json always has every call


class _BadArguments(Exception):
    pass


def _ws_url(text: str) -> str:
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise ValueError("must be ws://host[:port]/path or wss://...")
    return text


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _optional_rate(text: str) -> int | None:
    return positive(int)(text) if text.strip() else None


@dataclass(frozen=True)
class SimulateSettings:
    """One ``simulate`` run: where, how many calls, and what each call does (``call``)."""

    url: str = DEFAULT_URL
    calls: int = 1
    ramp_s: float = 0.0
    audio: str = ""  # a WAV file; empty: generated speech-like audio
    sample_rate: int | None = None  # None: the WAV's, else DEFAULT_SAMPLE_RATE
    hangup_after_send: bool = False
    insecure: bool = False
    out: str = ""
    json: bool = False
    call: CallOptions = field(default_factory=CallOptions)


# Each setting once; defaults from SimulateSettings and CallOptions themselves.
SIMULATE_SETTINGS: tuple[Setting, ...] = with_defaults((
    Setting("url", "KGW_SIM_URL", None, "gateway WebSocket URL, ws:// or wss://", _ws_url),
    Setting("calls", "KGW_SIM_CALLS", None, "concurrent calls", positive(int)),
    Setting("audio", "KGW_SIM_AUDIO", None,
            "caller audio, a mono 16-bit PCM WAV looped as needed (empty: generated "
            "speech-like audio)"),
    Setting("seconds", "KGW_SIM_SECONDS", None, "how long each call streams audio",
            non_negative(float), path="call.seconds"),
    Setting("sample_rate", "KGW_SIM_SAMPLE_RATE", "",
            f"call sample rate (empty: the WAV's, else {DEFAULT_SAMPLE_RATE})", _optional_rate),
    Setting("frame_ms", "KGW_SIM_FRAME_MS", None, "audio per frame, in ms", positive(int),
            path="call.frame_ms"),
    Setting("ramp_s", "KGW_SIM_RAMP_S", None, "spread call starts over this many seconds",
            non_negative(float)),
    Setting("out", "KGW_SIM_OUT", None,
            "if set, a directory to write <call_id>.heard.wav of the bot audio of each call"),
    Setting("linger_s", "KGW_SIM_LINGER_S", None,
            "after streaming, wait up to this long for bot audio or a hang-up before hanging up",
            non_negative(float), path="call.linger"),
    Setting("hangup_after_send", "KGW_SIM_HANGUP_AFTER_SEND", None,
            "hang up as soon as the audio is sent (no linger)", boolean),
    Setting("to", "KGW_SIM_TO", None, "the number called", path="call.to"),
    Setting("call_type", "KGW_SIM_CALL_TYPE", None, "call_type in the start message",
            choice("inbound", "outbound"), path="call.call_type"),
    Setting("seed", "KGW_SIM_SEED", None, "seed of the generated audio", int,
            path="call.seed"),
    Setting("subprotocols", "KGW_SIM_SUBPROTOCOLS", None,
            "WebSocket subprotocols to offer, comma-separated", _names,
            path="call.subprotocols"),
    Setting("insecure", "KGW_SIM_INSECURE", None,
            "do not verify the gateway's TLS certificate", boolean),
    Setting("json", "KGW_SIM_JSON", None,
            "print one JSON object with every call's result as the last line", boolean),
), SimulateSettings())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.description = (
        "Place calls against a gateway as Knowlarity does: send the start message, stream "
        "caller audio in real time, collect the bot's audio, hang up."
    )
    add_settings(parser, SIMULATE_SETTINGS)


def run(args: argparse.Namespace) -> int:
    """Run the calls ``args`` describe, print the report and return the exit status."""
    try:
        settings: SimulateSettings = from_args(SimulateSettings(), SIMULATE_SETTINGS, args)
        options = _call_options(settings)
    except (SettingError, _BadArguments) as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 2
    import txaio

    if txaio.using_twisted:
        return _run_in_child(args)
    from gateway.simulator import client

    started = time.monotonic()
    results = asyncio.run(
        client.place_calls(settings.url, options, settings.calls, settings.ramp_s))
    wall_s = time.monotonic() - started
    status = 0 if all(r.ok for r in results) else 1
    if settings.out:
        try:
            _write_heard(results, Path(settings.out))
        except (OSError, ValueError) as error:
            print(f"simulate: writing {settings.out}: {error}", file=sys.stderr)
            status = 1
    summary = summarize(results, wall_s)
    print(_report(results, summary, settings.url), flush=True)
    if settings.json:
        print(json.dumps({"calls": [r.to_json() for r in results], "summary": summary}))
    return status


def _call_options(settings: SimulateSettings) -> CallOptions:
    """The options of every call: the audio loaded, the rate settled, the flags applied."""
    pcm = None
    rate = settings.sample_rate
    if settings.audio:
        try:
            pcm, wav_rate = _load_wav(settings.audio)
        except (OSError, ValueError) as error:
            raise _BadArguments(f"--audio {settings.audio}: {error}") from None
        if rate is not None and rate != wav_rate:
            raise _BadArguments(
                f"--audio {settings.audio} is {wav_rate} Hz but --sample-rate is {rate}; "
                "give a WAV at the call's rate"
            )
        rate = wav_rate
    call = settings.call
    try:
        return replace(
            call,
            sample_rate=rate or DEFAULT_SAMPLE_RATE,
            pcm=pcm,
            linger=0.0 if settings.hangup_after_send else call.linger,
            verify_tls=not settings.insecure,
        )
    except ValueError as error:
        raise _BadArguments(str(error)) from None


def _load_wav(path: str) -> tuple[bytes, int]:
    from gateway.simulator.audio import load_wav  # numpy: only when a WAV is given

    return load_wav(path)


def _write_heard(results: Sequence[CallResult], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r.connected:
            name = re.sub(r"[^\w.-]", "_", r.call_id) + ".heard.wav"
            pcm = r.heard_pcm[: len(r.heard_pcm) // 2 * 2]
            (out / name).write_bytes(wav.encode_wav(pcm, r.sample_rate))


def _report(results: Sequence[CallResult], summary: dict[str, object], url: str) -> str:
    lines = [f"simulated {len(results)} call(s) against {url}"]
    if len(results) <= _MAX_ROWS:
        lines.append(
            f"{'call_id':<36}  {'ended':<14} {'sent s':>7} {'heard s':>7} "
            f"{'plays':>5} {'ttfa ms':>8}  detail"
        )
        for r in results:
            ttfa = "-" if r.time_to_first_audio_ms is None else f"{r.time_to_first_audio_ms:.1f}"
            lines.append(
                f"{r.call_id:<36}  {r.ended:<14} {r.audio_sent_ms / 1000:>7.2f} "
                f"{r.audio_received_ms / 1000:>7.2f} {r.play_frames:>5} {ttfa:>8}  {_detail(r)}"
            )
    else:
        lines.append(f"(per-call rows left out for {len(results)} calls; --json has them)")
    ended = summary["ended"]
    assert isinstance(ended, dict)
    how = ", ".join(f"{kind} {n}" for kind, n in ended.items())
    lines.append(
        f"calls {summary['calls']}, connected {summary['connected']}, "
        f"completed {summary['completed']} ({how})"
    )
    heard = (
        f"audio sent {summary['audio_sent_s']:.2f} s, heard {summary['audio_heard_s']:.2f} s "
        f"in {summary['play_frames']} playAudio frame(s)"
    )
    ttfa = summary["time_to_first_audio_ms"]
    if isinstance(ttfa, dict):
        heard += f"; first audio p50 {ttfa['p50']:.1f} ms, max {ttfa['max']:.1f} ms"
    lines.append(heard)
    violations = {
        "binary frames": summary["binary_frames"],
        "undecodable playAudio": summary["undecodable_frames"],
        "clips not at the call rate": summary["off_rate_play_frames"],
    }
    if any(violations.values()):
        lines.append("from the gateway: " + ", ".join(f"{k} {v}" for k, v in violations.items()))
    lines.append(f"wall {summary['wall_s']:.1f} s")
    return "\n".join(lines)


def _detail(r: CallResult) -> str:
    parts = []
    if r.transfer_parameters:
        parts.append(",".join(f"{k}={v}" for k, v in r.transfer_parameters))
    if r.ended == "gateway_closed":
        parts.append(f"code {r.close_code} {r.close_reason}".rstrip())
    if r.error:
        parts.append(r.error)
    if r.binary_frames:
        parts.append(f"{r.binary_frames} binary frame(s)")
    return "; ".join(parts)


def _run_in_child(args: argparse.Namespace) -> int:
    """Run the same command in a fresh interpreter: Autobahn here is already on Twisted."""
    argv = as_argv(args, SIMULATE_SETTINGS)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "gateway.simulator", *argv], env=env)
