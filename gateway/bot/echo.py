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
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from gateway import records, topics
from gateway.bot.echo_logic import EchoCalls, EchoPolicy, EchoStats, Effect, Note, PolicyError, Send
from gateway.settings import boolean

log = logging.getLogger(__name__)

TICK_S = 0.020  # longest wait between releases of due echoes
POLL_MS = 100  # getmany timeout: also how soon a stop request is seen
OUTBOX_HIGH_WATER = 2000  # commands waiting for the producer before consumption pauses
SHUTDOWN_TIMEOUT_S = 10.0  # flushing the producer on stop, whatever the broker does
STATS_EVERY_S = 60.0
WAITING_LOG_EVERY_S = 15.0


class SettingsError(ValueError):
    """A bad setting; the message names the flag and its environment variable."""


# --- settings ----------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    attr: str  # field of EchoBotSettings or EchoPolicy
    flag: str
    env: str
    parse: Callable[[str], object]
    help: str


def _parse_word(text: str) -> str:
    return text.strip().lower()


_SOURCES = (
    _Source("kafka", "--kafka", "KGW_KAFKA", str,
            "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (default 127.0.0.1:9092)"),
    _Source("topic_prefix", "--topic-prefix", "KGW_TOPIC_PREFIX", str,
            "topic name prefix (default knowlarity)"),
    _Source("group_id", "--group-id", "KGW_BOT_GROUP", str,
            "consumer group id (default knowlarity-echo-bot)"),
    _Source("from_beginning", "--from-beginning", "KGW_BOT_FROM_BEGINNING", boolean,
            "with no committed offset, start at the oldest record instead of the newest"),
    _Source("echo_delay_ms", "--echo-delay-ms", "KGW_BOT_ECHO_DELAY_MS", int,
            "play each caller chunk back this long after the bot received it (default 300)"),
    _Source("silence_dbfs", "--silence-dbfs", "KGW_BOT_SILENCE_DBFS", float,
            "caller audio below this RMS level counts as silence (default -45)"),
    _Source("silence_hangup_s", "--silence-hangup-s", "KGW_BOT_SILENCE_HANGUP_S", float,
            "hang up after this much caller silence, in media time; 0 disables (default 8)"),
    _Source("max_call_s", "--max-call-s", "KGW_BOT_MAX_CALL_S", float,
            "hang up this long after the call started, in wall time; 0 disables (default 120)"),
    _Source("log_level", "--log-level", "KGW_BOT_LOG_LEVEL", _parse_word,
            "debug, info, warning or error (default info)"),
    _Source("log_format", "--log-format", "KGW_BOT_LOG_FORMAT", _parse_word,
            "text (stderr) or json (one JSON object a line, on stdout) (default text)"),
    _Source("forget_after_s", "--forget-after-s", "KGW_BOT_FORGET_AFTER_S", float,
            "forget a call with no record for this long (default 600)"),
)
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR}
_LOG_FORMATS = ("text", "json")
_POLICY_FIELDS = {f.name for f in dataclasses.fields(EchoPolicy)}


def _dest(src: _Source) -> str:
    # Prefixed so that the CLI's own options can never collide with ours.
    return "echo_bot_" + src.attr


def _describe(src: _Source) -> str:
    return f"{src.flag} (env {src.env})"


def _check_kafka(value: str) -> tuple[str, ...]:
    servers = tuple(s.strip() for s in value.split(",") if s.strip())
    if not servers:
        raise ValueError("must name at least one HOST:PORT")
    for s in servers:
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{s!r} is not HOST:PORT")
    return servers


@dataclass(frozen=True)
class EchoBotSettings:
    """Everything the echo bot needs, validated at construction."""

    kafka: str = "127.0.0.1:9092"
    topic_prefix: str = "knowlarity"
    group_id: str = "knowlarity-echo-bot"
    from_beginning: bool = False
    log_level: str = "info"
    log_format: str = "text"
    policy: EchoPolicy = field(default_factory=EchoPolicy)

    def __post_init__(self) -> None:
        by_attr = {s.attr: s for s in _SOURCES}
        try:
            _check_kafka(self.kafka)
        except ValueError as e:
            raise SettingsError(f"bad setting {_describe(by_attr['kafka'])}: {e}") from None
        try:
            topics.check_name_part("topic prefix", self.topic_prefix)
        except ValueError as e:
            raise SettingsError(f"bad setting {_describe(by_attr['topic_prefix'])}: {e}") from None
        if not self.group_id.strip():
            raise SettingsError(f"bad setting {_describe(by_attr['group_id'])}: must be non-empty")
        if self.log_level not in _LOG_LEVELS:
            raise SettingsError(f"bad setting {_describe(by_attr['log_level'])}: "
                                f"must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in _LOG_FORMATS:
            raise SettingsError(f"bad setting {_describe(by_attr['log_format'])}: "
                                f"must be one of {', '.join(_LOG_FORMATS)}, "
                                f"got {self.log_format!r}")

    @property
    def bootstrap_servers(self) -> list[str]:
        return list(_check_kafka(self.kafka))

    @property
    def inbound_topic(self) -> str:
        return topics.inbound_topic(self.topic_prefix)

    @classmethod
    def from_sources(cls, args: argparse.Namespace | None = None,
                     environ: Mapping[str, str] | None = None) -> EchoBotSettings:
        """Command line over environment over defaults; the error names the bad setting."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for src in _SOURCES:
            given = getattr(args, _dest(src), None) if args is not None else None
            if given is None and src.env in env:
                try:
                    given = src.parse(env[src.env])
                except ValueError as e:
                    raise SettingsError(
                        f"bad setting {_describe(src)}: {env[src.env]!r}: {e}") from None
            if given is not None:
                values[src.attr] = given
        try:
            policy = EchoPolicy(**{k: v for k, v in values.items()  # type: ignore[arg-type]
                                   if k in _POLICY_FIELDS})
        except PolicyError as e:
            src = next(s for s in _SOURCES if s.flag == "--" + e.setting)
            raise SettingsError(f"bad setting {_describe(src)}: {e.reason}") from None
        rest = {k: v for k, v in values.items() if k not in _POLICY_FIELDS}
        return cls(policy=policy, **rest)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``knowlarity-gateway bot echo``; each also reads its environment variable."""
    for src in _SOURCES:
        help_text = f"{src.help} [env {src.env}]"
        if src.parse is boolean:
            parser.add_argument(src.flag, dest=_dest(src), action="store_const", const=True,
                                default=None, help=help_text)
        else:
            metavar = src.flag.lstrip("-").upper().replace("-", "_")
            parser.add_argument(src.flag, dest=_dest(src), type=_argparse_type(src),
                                default=None, metavar=metavar, help=help_text)


def _argparse_type(src: _Source) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return src.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    parse.__name__ = src.parse.__name__  # argparse names the type in its error
    return parse


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
        settings = EchoBotSettings.from_sources(args)
    except SettingsError as e:
        print(f"knowlarity-gateway bot echo: {e}", file=sys.stderr)
        return 2
    if settings.log_format == "json":
        from gateway.logs import stdlib_handler

        logging.basicConfig(level=_LOG_LEVELS[settings.log_level],
                            handlers=[stdlib_handler("json", sys.stdout)])
    else:
        logging.basicConfig(level=_LOG_LEVELS[settings.log_level],
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
