"""The echo bot's Kafka shell: ``knowlarity-gateway bot echo``.

A member of a consumer group on ``<prefix>.calls.inbound``. Records are decoded
here and handed to ``EchoCalls`` (``echo_logic``), which decides everything;
this module only executes its ``Send`` effects on one idempotent producer, in
the order the logic returned them (one sender task drains one outbox, so a
call's echo, mark and hang-up reach its reply topic in order). asyncio only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from gateway import records, topics
from gateway.bot.echo_logic import EchoCalls, EchoPolicy, EchoStats, Effect, Note, PolicyError, Send
from gateway.settings import (
    DEFAULT_KAFKA,
    DEFAULT_TOPIC_PREFIX,
    KAFKA,
    LOG_FORMAT,
    LOG_FORMATS,
    LOG_LEVEL,
    TOPIC_PREFIX,
    Setting,
    SettingError,
    add_settings,
    boolean,
    from_args,
    with_defaults,
)

log = logging.getLogger(__name__)

TICK_S = 0.020  # longest wait between releases of due echoes
POLL_MS = 100  # getmany timeout: also how soon a stop request is seen
OUTBOX_HIGH_WATER = 2000  # commands waiting for the producer before consumption pauses
SHUTDOWN_TIMEOUT_S = 10.0  # flushing the producer on stop, whatever the broker does
STATS_EVERY_S = 60.0
WAITING_LOG_EVERY_S = 15.0


# --- settings ----------------------------------------------------------------


def _group_id(text: str) -> str:
    if not text.strip():
        raise ValueError("must be non-empty")
    return text.strip()


@dataclass(frozen=True)
class EchoBotSettings:
    """Everything the echo bot needs; ``from_args`` resolves it from flags and environment."""

    kafka: str = DEFAULT_KAFKA
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    group_id: str = "knowlarity-echo-bot"
    from_beginning: bool = False
    log_format: str = LOG_FORMATS[0]
    log_level: str = "info"
    policy: EchoPolicy = field(default_factory=EchoPolicy)

    @property
    def bootstrap_servers(self) -> list[str]:
        return self.kafka.split(",")

    @property
    def inbound_topic(self) -> str:
        return topics.inbound_topic(self.topic_prefix)

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


# Each setting once; defaults from EchoBotSettings and EchoPolicy themselves.
ECHO_BOT_SETTINGS: tuple[Setting, ...] = with_defaults((
    KAFKA,
    TOPIC_PREFIX,
    Setting("group_id", "KGW_BOT_GROUP", None, "consumer group id (every replica the same)",
            _group_id),
    Setting("from_beginning", "KGW_BOT_FROM_BEGINNING", None,
            "with no committed offset, start at the oldest record instead of the newest",
            boolean),
    Setting("echo_delay_ms", "KGW_BOT_ECHO_DELAY_MS", None,
            "play each caller chunk back this long after the bot received it", int,
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
    Setting("forget_after_s", "KGW_BOT_FORGET_AFTER_S", None,
            "forget a call with no record for this long", float,
            path="policy.forget_after_s"),
    LOG_FORMAT,
    LOG_LEVEL,
), EchoBotSettings())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``knowlarity-gateway bot echo``; each also reads its environment variable."""
    add_settings(parser, ECHO_BOT_SETTINGS)


# --- the bot -------------------------------------------------------------------


@dataclass
class EchoBotStats:
    """What a run did; returned by ``run_echo_bot`` and logged periodically."""

    records: int = 0
    bad_records: int = 0
    ignored_records: int = 0
    commands_queued: int = 0
    send_failures: int = 0
    logic: EchoStats = field(default_factory=EchoStats)


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def on_partitions_revoked(self, revoked: object) -> None:
        log.info("event=partitions_revoked partitions=%s", _fmt_tps(revoked))

    def on_partitions_assigned(self, assigned: object) -> None:
        log.info("event=partitions_assigned partitions=%s", _fmt_tps(assigned))
        self.changed.set()


def _fmt_tps(tps: object) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))  # type: ignore[attr-defined]


class _EchoBot:
    def __init__(self, settings: EchoBotSettings) -> None:
        self.settings = settings
        self.calls = EchoCalls(settings.policy)
        self.stats = EchoBotStats(logic=self.calls.stats)
        self._outbox: deque[Send] = deque()
        self._outbox_wake = asyncio.Event()
        self._outbox_room = asyncio.Event()
        self._outbox_room.set()
        self._pending_sends: set[asyncio.Future[object]] = set()
        self._loop = asyncio.get_running_loop()
        self._assignment = _Assignment()
        servers = settings.bootstrap_servers
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            group_id=settings.group_id,
            client_id="knowlarity-echo-bot",
            auto_offset_reset="earliest" if settings.from_beginning else "latest",
            enable_auto_commit=True,
            # A bot started before any node has created the inbound topic
            # would otherwise wait for the default 5-minute metadata refresh.
            metadata_max_age_ms=10_000,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=servers,
            client_id="knowlarity-echo-bot",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            # A node's commands topic has one partition, and aiokafka keeps one
            # batch per partition in flight: at the default 16 KiB (about 20
            # echo chunks) commands queue up behind each other under load.
            max_batch_size=512 * 1024,
        )

    async def run(self, ready: asyncio.Event | None, stop: asyncio.Event) -> EchoBotStats:
        s = self.settings
        log.info("event=echo_bot_starting kafka=%s topic=%s group_id=%s from_beginning=%s "
                 "policy=%s", s.kafka, s.inbound_topic, s.group_id, s.from_beginning, s.policy)
        self.consumer.subscribe([s.inbound_topic], listener=self._assignment)
        try:
            await self.producer.start()
            await self.consumer.start()
        except BaseException:
            # Either may be half-started; stopping both releases their connections.
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()
            raise
        sender = asyncio.create_task(self._sender(), name="echo-sender")
        ticker = asyncio.create_task(self._ticker(), name="echo-ticker")
        ready_task = asyncio.create_task(self._signal_ready(ready), name="echo-ready")
        try:
            await self._consume(stop)
        finally:
            ready_task.cancel()
            ticker.cancel()
            await asyncio.gather(ready_task, ticker, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.consumer.stop()  # leaves the group and commits what was consumed
            # Echoes still held go out now rather than never.
            self._execute(self.calls.flush())
            await self._drain(sender)
            await self._stop_producer()
            self._log_stats("echo_bot_stopped")
        return self.stats

    async def _consume(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if len(self._outbox) > OUTBOX_HIGH_WATER:
                # The producer is behind (broker slow or away): stop reading until it catches up.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox_room.wait(), POLL_MS / 1000)
                continue
            batches = await self.consumer.getmany(timeout_ms=POLL_MS)
            for batch in batches.values():
                for msg in batch:
                    self._handle(msg.value)

    def _handle(self, value: bytes | None) -> None:
        self.stats.records += 1
        try:
            if value is None:
                raise records.BadRecord("inbound record without a value")
            rec = records.decode_inbound(value)
            if not rec.call_id:
                raise records.BadRecord("inbound record without call_id")
            now = self._loop.time()
            kind = rec.WhichOneof("body")
            if kind == "started":
                st = rec.started
                effects = self.calls.on_started(rec.call_id, st.reply_topic, st.sample_rate, now)
            elif kind == "audio":
                effects = self.calls.on_audio(rec.call_id, rec.audio.pcm, rec.audio.sample_rate,
                                              now)
            elif kind == "ended":
                effects = self.calls.on_ended(rec.call_id, now)
            else:
                # provider_event, playback, dropped, or a body newer than this bot.
                self.stats.ignored_records += 1
                log.debug("event=record_ignored call_id=%s kind=%s record_seq=%d",
                          rec.call_id, kind, rec.record_seq, extra={"call_id": rec.call_id})
                effects = self.calls.on_other(rec.call_id, now)
        except records.BadRecord as e:
            self.stats.bad_records += 1
            if _worth_logging(self.stats.bad_records):
                log.warning("event=bad_record count=%d error=%s", self.stats.bad_records, e)
            return
        except Exception:
            # A bug must not take the bot down with every call it holds.
            self.stats.bad_records += 1
            log.exception("event=record_failed count=%d", self.stats.bad_records)
            return
        self._execute(effects)

    def _execute(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Note):
                log.info("event=%s call_id=%s%s", e.event, e.call_id,
                         " " + e.detail if e.detail else "", extra={"call_id": e.call_id})
            else:
                self._outbox.append(e)
                self.stats.commands_queued += 1
        if self._outbox:
            self._outbox_wake.set()

    async def _ticker(self) -> None:
        next_stats = self._loop.time() + STATS_EVERY_S
        while True:
            now = self._loop.time()
            try:
                self._execute(self.calls.tick(now))
            except Exception:
                # A bug must not stop every call's echo; log it and tick again.
                log.exception("event=tick_failed")
            if now >= next_stats:
                next_stats = now + STATS_EVERY_S
                self._log_stats("echo_bot_stats")
            due = self.calls.next_due()
            wait = TICK_S if due is None else min(TICK_S, due - self._loop.time())
            await asyncio.sleep(max(wait, 0.001))

    async def _sender(self) -> None:
        """The only place commands are produced: one task, so they keep the logic's order."""
        while True:
            while not self._outbox:
                self._outbox_room.set()
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
            send = self._outbox.popleft()
            if len(self._outbox) <= OUTBOX_HIGH_WATER // 2:
                self._outbox_room.set()
            else:
                self._outbox_room.clear()
            cmd = dataclasses.replace(send.command, sent_at=time.time())
            try:
                # Only enqueues in the producer's batch (waits if its buffer is full).
                fut = await self.producer.send(send.topic, records.encode_command(cmd),
                                               key=cmd.call_id.encode())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._send_failed(cmd, e)
                continue
            self._pending_sends.add(fut)
            fut.add_done_callback(lambda f, c=cmd: self._sent(f, c))

    def _sent(self, fut: asyncio.Future[object], cmd: object) -> None:
        self._pending_sends.discard(fut)
        if fut.cancelled():
            self._send_failed(cmd, asyncio.CancelledError())
        elif fut.exception() is not None:
            self._send_failed(cmd, fut.exception())

    def _send_failed(self, cmd: object, error: BaseException | None) -> None:
        self.stats.send_failures += 1
        if _worth_logging(self.stats.send_failures):
            call_id = getattr(cmd, "call_id", "")
            log.warning("event=send_failed call_id=%s command_id=%s count=%d error=%r",
                        call_id, getattr(cmd, "command_id", ""), self.stats.send_failures, error,
                        extra={"call_id": call_id})

    async def _drain(self, sender: asyncio.Task[None]) -> None:
        async def outbox_empty() -> None:
            while self._outbox:
                await asyncio.sleep(0.005)
        try:
            await asyncio.wait_for(outbox_empty(), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            log.warning("event=outbox_abandoned commands=%d", len(self._outbox))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    async def _stop_producer(self) -> None:
        try:
            await asyncio.wait_for(self.producer.flush(), SHUTDOWN_TIMEOUT_S)
        except (TimeoutError, KafkaError) as e:
            log.warning("event=producer_flush_failed unacknowledged=%d error=%r",
                        len(self._pending_sends), e)
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(self.producer.stop(), SHUTDOWN_TIMEOUT_S)

    async def _signal_ready(self, ready: asyncio.Event | None) -> None:
        """Set ``ready`` once partitions are assigned and their start positions known.

        Waiting for the positions matters: with ``latest``, a record produced
        after assignment but before the position lookup would be skipped. A
        member assigned no partition (more bots than partitions) is never ready.
        """
        while True:
            try:
                await asyncio.wait_for(self._assignment.changed.wait(), WAITING_LOG_EVERY_S)
            except TimeoutError:
                log.warning("event=echo_bot_waiting_for_partitions topic=%s group_id=%s "
                            "hint='does the topic exist? brokers here do not auto-create'",
                            self.settings.inbound_topic, self.settings.group_id)
                continue
            self._assignment.changed.clear()
            assigned = self.consumer.assignment()
            if not assigned:
                continue
            try:
                for tp in assigned:
                    await self.consumer.position(tp)
            except IllegalStateError:
                continue  # revoked meanwhile; the next assignment sets the event again
            log.info("event=echo_bot_ready partitions=%s", _fmt_tps(assigned))
            if ready is not None:
                ready.set()
            return

    def _log_stats(self, event: str) -> None:
        st, lg = self.stats, self.stats.logic
        log.info("event=%s live_calls=%d records=%d bad_records=%d ignored=%d started=%d "
                 "ended=%d forgotten=%d without_start=%d echoed=%d hangups_silence=%d "
                 "hangups_max_call=%d commands=%d send_failures=%d",
                 event, len(self.calls), st.records, st.bad_records, st.ignored_records,
                 lg.calls_started, lg.calls_ended, lg.calls_forgotten, lg.records_without_start,
                 lg.chunks_echoed, lg.hangups_silence, lg.hangups_max_call, st.commands_queued,
                 st.send_failures)


def _worth_logging(count: int) -> bool:
    return count <= 10 or count % 1000 == 0


async def run_echo_bot(settings: EchoBotSettings, *, ready: asyncio.Event | None = None,
                       stop: asyncio.Event | None = None) -> EchoBotStats:
    """Run the bot until ``stop`` is set; ``ready`` is set once it holds partitions.

    Raises ``aiokafka.errors.KafkaError`` if the broker cannot be reached at start.
    """
    bot = _EchoBot(settings)
    return await bot.run(ready, stop if stop is not None else asyncio.Event())


# --- the command line ------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Entry point for ``knowlarity-gateway bot echo``: 0 on a clean stop, 2 on a bad setting."""
    try:
        settings = EchoBotSettings.from_args(args)
    except SettingError as e:
        print(f"knowlarity-gateway bot echo: {e}", file=sys.stderr)
        return 2
    from gateway.ops.logs import stdlib_handler

    # json: on stdout, as the node writes it; text: on stderr, as people read it.
    out = sys.stdout if settings.log_format == "json" else sys.stderr
    logging.basicConfig(level=settings.log_level.upper(),
                        handlers=[stdlib_handler(settings.log_format, out)])
    if settings.log_level != "debug":
        # aiokafka narrates every group join at INFO; the bot logs what matters itself.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return asyncio.run(_main(settings))


async def _main(settings: EchoBotSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_echo_bot(settings, stop=stop)
    except KafkaError as e:
        log.error("event=echo_bot_failed kafka=%s error=%r", settings.kafka, e)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
