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
from pathlib import Path

from gateway.core import wav
from gateway.simulator.model import DEFAULT_CALLEE, CallOptions, CallResult, summarize

__all__ = ["DEFAULT_URL", "URL_ENV", "add_arguments", "run"]

URL_ENV = "KGW_SIM_URL"
DEFAULT_URL = "ws://127.0.0.1:8080/vaani/knowlarity/setup-call-streams"
DEFAULT_SAMPLE_RATE = 16000
_MAX_ROWS = 20  # per-call rows in the human report; --json always has every call


class _BadArguments(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.description = (
        "Place calls against a gateway as Knowlarity does: send the start message, stream "
        "caller audio in real time, collect the bot's audio, hang up."
    )
    add = parser.add_argument
    add(
        "--url",
        help=f"gateway WebSocket URL, ws:// or wss:// (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    add("--calls", type=int, default=1, metavar="N", help="concurrent calls (default 1)")
    add(
        "--audio",
        metavar="FILE.wav",
        help="caller audio, mono 16-bit PCM WAV, looped as "
        "needed (default: generated speech-like audio)",
    )
    add(
        "--seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="how long each call streams audio (default 10)",
    )
    add(
        "--sample-rate",
        type=int,
        metavar="HZ",
        help=f"call sample rate (default: the WAV's, else {DEFAULT_SAMPLE_RATE})",
    )
    add("--frame-ms", type=int, default=20, metavar="MS", help="audio per frame (default 20)")
    add(
        "--ramp",
        type=float,
        default=0.0,
        metavar="S",
        help="spread call starts over S seconds (default 0)",
    )
    add("--out", metavar="DIR", help="write <call_id>.heard.wav of the bot audio per call")
    add(
        "--linger",
        type=float,
        default=2.0,
        metavar="S",
        help="after streaming, wait up to S "
        "seconds for bot audio or a hang-up before hanging up (default 2)",
    )
    add(
        "--hangup-after-send",
        action="store_true",
        help="hang up as soon as the audio is sent (no linger)",
    )
    add("--to", default=DEFAULT_CALLEE, help=f"the number called (default {DEFAULT_CALLEE})")
    add(
        "--call-type",
        choices=("inbound", "outbound"),
        default="inbound",
        help="call_type in the start message (default inbound)",
    )
    add("--seed", type=int, default=0, help="seed of the generated audio (default 0)")
    add(
        "--subprotocol",
        action="append",
        metavar="NAME",
        help="WebSocket subprotocol to offer (repeatable)",
    )
    add("--insecure", action="store_true", help="do not verify the gateway's TLS certificate")
    add(
        "--json",
        action="store_true",
        help="print one JSON object with every call's result as the last line",
    )


def run(args: argparse.Namespace) -> int:
    """Run the calls ``args`` describe, print the report and return the exit status."""
    try:
        url, options = _call_options(args)
    except _BadArguments as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 2
    import txaio

    if txaio.using_twisted:
        return _run_in_child(args)
    from gateway.simulator import client

    started = time.monotonic()
    results = asyncio.run(client.place_calls(url, options, args.calls, args.ramp))
    wall_s = time.monotonic() - started
    status = 0 if all(r.ok for r in results) else 1
    if args.out:
        try:
            _write_heard(results, Path(args.out))
        except (OSError, ValueError) as error:
            print(f"simulate: writing {args.out}: {error}", file=sys.stderr)
            status = 1
    summary = summarize(results, wall_s)
    print(_report(results, summary, url), flush=True)
    if args.json:
        print(json.dumps({"calls": [r.to_json() for r in results], "summary": summary}))
    return status


def _call_options(args: argparse.Namespace) -> tuple[str, CallOptions]:
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise _BadArguments(f"--url must be ws://host[:port]/path or wss://...; got {url!r}")
    if args.calls < 1:
        raise _BadArguments(f"--calls must be at least 1; got {args.calls}")
    if args.ramp < 0:
        raise _BadArguments(f"--ramp must be >= 0; got {args.ramp}")
    pcm = None
    rate = args.sample_rate
    if args.audio:
        try:
            pcm, wav_rate = _load_wav(args.audio)
        except (OSError, ValueError) as error:
            raise _BadArguments(f"--audio {args.audio}: {error}") from None
        if rate is not None and rate != wav_rate:
            raise _BadArguments(
                f"--audio {args.audio} is {wav_rate} Hz but --sample-rate is {rate}; "
                "give a WAV at the call's rate"
            )
        rate = wav_rate
    try:
        options = CallOptions(
            sample_rate=rate or DEFAULT_SAMPLE_RATE,
            frame_ms=args.frame_ms,
            seconds=args.seconds,
            pcm=pcm,
            seed=args.seed,
            linger=0.0 if args.hangup_after_send else args.linger,
            to=args.to,
            call_type=args.call_type,
            subprotocols=tuple(args.subprotocol or ()),
            verify_tls=not args.insecure,
        )
    except ValueError as error:
        raise _BadArguments(str(error)) from None
    return url, options


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
    argv: list[str] = []
    for flag, value in (
        ("--url", args.url), ("--calls", args.calls), ("--audio", args.audio),
        ("--seconds", args.seconds), ("--sample-rate", args.sample_rate),
        ("--frame-ms", args.frame_ms), ("--ramp", args.ramp), ("--out", args.out),
        ("--linger", args.linger), ("--to", args.to), ("--call-type", args.call_type),
        ("--seed", args.seed),
    ):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    for name in args.subprotocol or ():
        argv += ["--subprotocol", name]
    for flag, on in (
        ("--hangup-after-send", args.hangup_after_send), ("--insecure", args.insecure),
        ("--json", args.json),
    ):  # fmt: skip
        if on:
            argv.append(flag)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "gateway.simulator", *argv], env=env)
