"""The echo bot, on the SDK: ``knowlarity-gateway bot echo``.

Per call: greet with a chime and a mark, play each caller chunk back the echo
delay after the node received it (timed to the caller's stream, so the bus's
latency does not add to it), hang up after a stretch of silence (media time) or a
too-long call (wall time). ``EchoCall`` (``echo_logic``) decides; this module
only runs it for each call the SDK hands over and turns its commands into the
call's methods. A call taken over mid-way (``joined_late``) is not greeted
again: it is echoed from the live audio on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway import sdk
from gateway.bot.echo_logic import EchoCall, EchoPolicy, PolicyError
from gateway.core import model as m
from gateway.settings import (
    Setting,
    SettingError,
    add_settings,
    from_args,
    nested,
    with_defaults,
)

log = logging.getLogger(__name__)


# --- settings ----------------------------------------------------------------


@dataclass(frozen=True)
class EchoBotSettings:
    """The SDK's settings (``bot``) and how the echo behaves (``policy``)."""

    bot: sdk.BotSettings = sdk.BotSettings(group_id="knowlarity-echo-bot")
    policy: EchoPolicy = field(default_factory=EchoPolicy)

    @classmethod
    def from_args(cls, args: argparse.Namespace | None = None,
                  env: Mapping[str, str] | None = None) -> EchoBotSettings:
        """Flag over environment over default; a bad value raises ``SettingError`` naming it."""
        try:
            settings: EchoBotSettings = from_args(cls(), ECHO_BOT_SETTINGS, args, env)
        except PolicyError as e:  # a value that parsed but is out of the policy's range
            s = next(s for s in ECHO_BOT_SETTINGS if s.flag == "--" + e.setting)
            raise SettingError(f"bad value for {s.flag} / {s.env}: {e.reason}") from None
        return settings


# Each setting once: the SDK's, then the policy's; defaults from the classes themselves.
ECHO_BOT_SETTINGS: tuple[Setting, ...] = with_defaults((
    *nested(sdk.BOT_SETTINGS, "bot"),
    Setting("echo_delay_ms", "KGW_BOT_ECHO_DELAY_MS", None,
            "play each caller chunk back this long after the node received it", int,
            path="policy.echo_delay_ms"),
    Setting("silence_dbfs", "KGW_BOT_SILENCE_DBFS", None,
            "caller audio below this RMS level counts as silence", float,
            path="policy.silence_dbfs"),
    Setting("silence_hangup_s", "KGW_BOT_SILENCE_HANGUP_S", None,
            "hang up after this much caller silence, in media time (0: never)", float,
            path="policy.silence_hangup_s"),
    Setting("max_call_s", "KGW_BOT_MAX_CALL_S", None,
            "hang up this long after the call started, in wall time (0: never)", float,
            path="policy.max_call_s"),
), EchoBotSettings())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``knowlarity-gateway bot echo``; each also reads its environment variable."""
    add_settings(parser, ECHO_BOT_SETTINGS)


# --- one call ----------------------------------------------------------------------


async def echo_call(call: sdk.Call, policy: EchoPolicy) -> None:
    """The SDK handler: one echo call, until it ends or the bot hangs up."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    # Max-call counts from the call's start, also for a call taken over mid-way.
    age = max(0.0, time.time() - call.info.started_at) if call.info.started_at else 0.0
    logic = EchoCall(call_id=call.call_id, reply_topic=call.info.reply_topic,
                     sample_rate=call.info.sample_rate, policy=policy, started_at=now - age,
                     last_seen=now)
    log.info("event=call_started call_id=%s sample_rate=%d joined_late=%s", call.call_id,
             call.info.sample_rate, call.info.joined_late, extra={"call_id": call.call_id})
    if not call.info.joined_late:
        await _execute(call, logic.greeting())
    chunks = aiter(call.audio())
    pending: asyncio.Future[sdk.Audio] | None = None
    try:
        while not logic.hung_up:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            wake = _earliest(logic.next_due(),
                             logic.started_at + policy.max_call_s if policy.max_call_s else None)
            timeout = None if wake is None else max(0.0, wake - loop.time())
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if pending in done:
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    return  # the call ended
                pending = None
                now = loop.time()
                commands = logic.on_audio(chunk.pcm, chunk.sample_rate, now,
                                          _heard_at(chunk, now), chunk.start_ms)
            else:
                commands = logic.tick(loop.time())
            await _execute(call, commands)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    log.info("event=hang_up call_id=%s reason=%s", call.call_id, logic.hangup_reason,
             extra={"call_id": call.call_id})


def _heard_at(chunk: sdk.Audio, now: float) -> float | None:
    """When the node received ``chunk``, on the loop's clock; None when the record has no time.

    The node's epoch clock and ours are taken to agree (NTP keeps hosts within a few
    ms); a chunk stamped in our future counts as heard now.
    """
    if chunk.received_at <= 0:
        return None
    return now - max(0.0, time.time() - chunk.received_at)


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)


async def _execute(call: sdk.Call, commands: list[m.Command]) -> None:
    for c in commands:
        body = c.body
        if isinstance(body, m.PlayAudio):
            await call.play(body.pcm, body.sample_rate, at_caller_ms=body.at_caller_ms)
        elif isinstance(body, m.Mark):
            await call.send_mark(body.name)  # nothing waits on the greeting's mark
        elif isinstance(body, m.HangUp):
            await call.hang_up()


# --- the bot -------------------------------------------------------------------------


async def run_echo_bot(settings: EchoBotSettings, *, ready: asyncio.Event | None = None,
                       stop: asyncio.Event | None = None) -> sdk.Stats:
    """Run the bot until ``stop`` is set; ``ready`` is set once it holds partitions.

    Raises ``aiokafka.errors.KafkaError`` if the broker cannot be reached at start.
    """
    async def handler(call: sdk.Call) -> None:
        await echo_call(call, settings.policy)

    return await sdk.run_bot(handler, settings.bot, ready=ready, stop=stop)


def run(args: argparse.Namespace) -> int:
    """Entry point for ``knowlarity-gateway bot echo``: 0 on a clean stop, 2 on a bad setting."""
    try:
        settings = EchoBotSettings.from_args(args)
    except SettingError as e:
        print(f"knowlarity-gateway bot echo: {e}", file=sys.stderr)
        return 2

    async def handler(call: sdk.Call) -> None:
        await echo_call(call, settings.policy)

    return sdk.main(handler, settings=settings.bot)
