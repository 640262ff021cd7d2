"""The bot SDK: write one coroutine per call, run it as a member of a consumer group.

    from gateway import sdk

    async def handle(call: sdk.Call) -> None:
        await call.play_wav("hello.wav")
        async for chunk in call.audio():
            ...  # chunk.pcm (bytes), chunk.samples (numpy int16), chunk.seq, chunk.position

    sdk.main(handle)  # flags and KGW_* variables as in docs/bots.md

Envelopes, keys, reply topics, headers and offsets stay inside. Delivery is
at-least-once, in order per call; a call taken over mid-way (rebalance,
restart) is ``info.joined_late`` and answers live audio. See docs/bots.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from gateway.kafka_access import AccessError, client_options
from gateway.sdk.call import (
    HANDED_OVER,
    Audio,
    AudioDropped,
    Call,
    CallEnd,
    CallInfo,
    CaptureWithheld,
    CommandRejected,
    Event,
    MarkOutcome,
    MarkResult,
    PlaybackCleared,
    ProviderText,
    RecordsLost,
)
from gateway.sdk.calls import Handler, Limits, Stats
from gateway.sdk.runner import run_bot
from gateway.sdk.settings import BOT_SETTINGS, BotSettings
from gateway.settings import SettingError, add_settings, from_args

__all__ = [
    "BOT_SETTINGS",
    "HANDED_OVER",
    "Audio",
    "AudioDropped",
    "BotSettings",
    "Call",
    "CallEnd",
    "CallInfo",
    "CaptureWithheld",
    "CommandRejected",
    "Event",
    "Handler",
    "Limits",
    "MarkOutcome",
    "MarkResult",
    "PlaybackCleared",
    "ProviderText",
    "RecordsLost",
    "Stats",
    "main",
    "run_bot",
    "start_logging",
]


def start_logging(log_format: str, log_level: str) -> None:
    """JSON lines on stdout (for shippers) or text on stderr, as the node does."""
    from gateway.ops.logs import stdlib_handler

    out = sys.stdout if log_format == "json" else sys.stderr
    logging.basicConfig(level=log_level.upper(), handlers=[stdlib_handler(log_format, out)])
    if log_level != "debug":
        # aiokafka narrates every group join at INFO; the SDK logs what matters itself.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)


def main(handler: Handler, argv: Sequence[str] | None = None, *,
         settings: BotSettings | None = None) -> int:
    """Run ``handler`` as a bot until SIGINT/SIGTERM: settings from flags and environment
    (``--help`` lists them) unless given. Returns the exit status (2: a bad setting)."""
    if settings is None:
        parser = argparse.ArgumentParser(description="a bot on the knowlarity-gateway SDK")
        add_settings(parser, BOT_SETTINGS)
        try:
            settings = from_args(BotSettings(), BOT_SETTINGS, parser.parse_args(argv))
        except SettingError as e:
            print(e, file=sys.stderr)
            return 2
    try:
        client_options(settings.kafka_access)  # the files exist and the combination works
    except AccessError as e:
        print(e, file=sys.stderr)
        return 2
    start_logging(settings.log_format, settings.log_level)
    return asyncio.run(_until_signalled(handler, settings))


async def _until_signalled(handler: Handler, settings: BotSettings) -> int:
    from aiokafka.errors import KafkaError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_bot(handler, settings, stop=stop)
    except (KafkaError, AccessError) as e:
        logging.getLogger(__name__).error("event=bot_failed kafka=%s error=%s", settings.kafka, e)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
