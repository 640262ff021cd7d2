"""The ``audit`` command line: one call rebuilt from the bus into files, or a list of calls.

Exit status: 0 when the files were written (or the list printed); 1 when the call
or the topics were not found; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from gateway.audit import files, reading
from gateway.audit.timeline import NoCall, Timeline, build
from gateway.kafka_access import ACCESS_SETTINGS, AccessError, KafkaAccess, explained, target
from gateway.settings import (
    DEFAULT_KAFKA,
    DEFAULT_TOPIC_PREFIX,
    KAFKA,
    TOPIC_PREFIX,
    Setting,
    SettingError,
    add_settings,
    boolean,
    from_args,
    nested,
    non_negative,
    positive,
    with_defaults,
)

__all__ = ["AUDIT_SETTINGS", "AuditSettings", "add_arguments", "run", "write_call"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str) -> int | None:
    """Microseconds since the epoch: ``90s``/``30m``/``1h``/``2d`` ago, or an ISO 8601
    time (UTC unless it says otherwise); empty: not known (None)."""
    text = text.strip()
    if not text:
        return None
    ago = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if ago:
        return int((time.time() - float(ago[1]) * _UNITS[ago[2]]) * 1e6)
    try:
        at = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a duration ago (90s, 30m, 1h, 2d) or an ISO time, "
                         f"got {text!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    return int(at.timestamp() * 1e6)


@dataclass(frozen=True)
class AuditSettings:
    kafka: str = DEFAULT_KAFKA
    kafka_access: KafkaAccess = KafkaAccess()
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    call_id: str = ""
    out: str = "."
    list: bool = False
    since: int | None = None
    lookback_s: float = 86400.0
    embed_audio_max_mb: float = 64.0


AUDIT_SETTINGS: tuple[Setting, ...] = with_defaults((
    KAFKA,
    *nested(ACCESS_SETTINGS, "kafka_access"),
    TOPIC_PREFIX,
    Setting("call_id", "KGW_AUDIT_CALL_ID", None, "the call to rebuild"),
    Setting("out", "KGW_AUDIT_OUT", None,
            "directory for CALL_ID.wav, .json, .png and .html (created if missing)"),
    Setting("list", "KGW_AUDIT_LIST", None,
            "list the calls started or ended since --since (else --lookback-s) instead",
            boolean),
    Setting("since", "KGW_AUDIT_SINCE", "",
            "read from this time: a duration ago (90s, 30m, 1h, 2d) or an ISO 8601 time "
            "(empty: a live call's start from the call-state topic, else --lookback-s)",
            since_time),
    Setting("lookback_s", "KGW_AUDIT_LOOKBACK_S", None,
            "how far back to read when the call's start time is not known (seconds)",
            positive(float)),
    Setting("embed_audio_max_mb", "KGW_AUDIT_EMBED_AUDIO_MAX_MB", None,
            "largest WAV embedded in the HTML page (64 MB: about 17 min at 16 kHz); a longer "
            "call's page plays the WAV beside it", non_negative(float)),
), AuditSettings())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``audit`` options to ``parser``."""
    parser.description = (
        "Rebuild one call from the bus alone: a stereo WAV (caller left, bot right), a JSON "
        "summary, a timeline PNG and one HTML page with all three; or list recent calls.")
    add_settings(parser, AUDIT_SETTINGS)


def run(args: argparse.Namespace) -> int:
    """Write the call's files (or print the list) and return the exit status."""
    try:
        settings = _settings(args)
        if settings.list:
            return _list(settings)
        timeline = asyncio.run(_timeline(settings))
    except SettingError as error:
        print(f"audit: {error}", file=sys.stderr)
        return 2
    except (LookupError, NoCall, KafkaError, AccessError) as error:
        print(f"audit: {error}", file=sys.stderr)
        return 1
    embed = int(settings.embed_audio_max_mb * 1e6)
    for path in write_call(timeline, Path(settings.out), embed_max_bytes=embed):
        print(path)
    return 0


def _settings(args: argparse.Namespace) -> AuditSettings:
    settings: AuditSettings = from_args(AuditSettings(), AUDIT_SETTINGS, args)
    if not settings.list and not settings.call_id:
        raise SettingError("give --call-id (or --list)")
    return settings


def _kafka(settings: AuditSettings) -> dict[str, Any]:
    try:
        return target(settings.kafka, settings.kafka_access)
    except AccessError as e:
        raise SettingError(str(e)) from None


async def _timeline(settings: AuditSettings) -> Timeline:
    kafka = _kafka(settings)
    got = await explained(kafka, lambda: reading.fetch_call(
        kafka, settings.topic_prefix, settings.call_id, since_us=settings.since,
        lookback_s=settings.lookback_s))
    if not got.inbound and not got.outbound:
        raise LookupError(f"no records of call {settings.call_id!r} on partition "
                          f"{got.partition} since {_when(got.since_us)}")
    return build(got.inbound, got.outbound)


def write_call(t: Timeline, out: Path, *, embed_max_bytes: int | None = None) -> list[Path]:
    """Write ``<call_id>.wav``, ``.json``, ``.png`` and ``.html`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]", "_", t.call_id)
    wav, png = files.wav(t), files.png(t)
    written = {".wav": wav, ".png": png,
               ".json": json.dumps(t.summary(), indent=2, ensure_ascii=False).encode(),
               ".html": files.html_page(t, png, wav, wav_name=stem + ".wav",
                                        embed_max_bytes=embed_max_bytes).encode()}
    paths = []
    for suffix, data in written.items():
        path = out / (stem + suffix)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _list(settings: AuditSettings) -> int:
    since = settings.since
    if since is None:
        since = int((time.time() - settings.lookback_s) * 1e6)
    kafka = _kafka(settings)
    rows = asyncio.run(explained(kafka, lambda: reading.list_calls(
        kafka, settings.topic_prefix, since)))
    print(f"{'started (UTC)':<20} {'duration':>9}  {'end reason':<16} {'node':<12} call id")
    for r in rows:
        duration = f"{r.duration_ms / 1000:.1f}s" if r.duration_ms is not None else "live"
        print(f"{_when(r.started_us):<20} {duration:>9}  {r.end_reason or '-':<16} "
              f"{r.node_id:<12} {r.call_id}")
    return 0


def _when(t_us: int | None) -> str:
    if t_us is None:
        return "(before --since)"
    return datetime.datetime.fromtimestamp(t_us / 1e6, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")
