"""One call as a bot sees it: what the provider said at the start, the caller's audio,
commands back, playback events and the end. No Kafka here: a ``Call`` is handed a
``send`` coroutine, so the same object runs against the bus or in memory (tests).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core import model as m
from gateway.core import wav
from gateway.sdk.inbox import Done, Inbox


@dataclass(frozen=True)
class CallInfo:
    """What the bot knows about a call: the start fields, and where its commands go."""

    call_id: str
    reply_topic: str
    sample_rate: int
    node_id: str = ""
    caller: str = ""
    callee: str = ""
    direction: str = "unspecified"  # "inbound", "outbound" or "unspecified"
    campaign: str = ""
    # Every field the provider sent, known or not (metadata decoded to an object).
    provider_fields: Mapping[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # wall clock, seconds since the epoch; 0 if unknown
    # This instance never saw the call's start record: it took the call over
    # (a rebalance, a restart) and answers live audio from where it joined.
    joined_late: bool = False
    # False when the call joined late and its start fields could not be found
    # (only reply topic, sample rate and node id, from the record headers, are known).
    start_known: bool = True


@dataclass(frozen=True)
class Audio:
    """A chunk of caller audio: mono signed 16-bit little-endian PCM at ``sample_rate``."""

    pcm: bytes
    seq: int  # gap-free per call from 0 (a gap means audio lost on the way; see RecordsLost)
    position: int  # the first sample's position in the caller's stream
    sample_rate: int
    received_at: float  # when the node received it, seconds since the epoch

    @property
    def samples(self) -> np.ndarray:
        """A read-only numpy int16 view of ``pcm`` (no copy)."""
        return np.frombuffer(self.pcm, dtype="<i2", count=len(self.pcm) // 2)

    @property
    def duration_s(self) -> float:
        return len(self.pcm) // 2 / self.sample_rate

    @property
    def start_ms(self) -> int:
        """Where the chunk starts in the caller's stream, in ms (for ``play(at_caller_ms=)``)."""
        return self.position * 1000 // self.sample_rate

    @property
    def end_ms(self) -> int:
        """Where the chunk ends in the caller's stream, in ms."""
        return (self.position + len(self.pcm) // 2) * 1000 // self.sample_rate


class MarkOutcome(enum.Enum):
    REACHED = "reached"  # every audio before it was played out
    CLEARED = "cleared"  # a clear dropped audio before it: the caller did not hear all of it
    ENDED = "ended"  # the call ended first


@dataclass(frozen=True)
class MarkResult:
    """What became of a mark: ``heard_ms`` of the audio queued before it were played."""

    name: str
    outcome: MarkOutcome
    heard_ms: int = 0

    @property
    def reached(self) -> bool:
        return self.outcome is MarkOutcome.REACHED


# --- events other than audio -------------------------------------------------------


@dataclass(frozen=True)
class PlaybackCleared:
    """A clear discarded this much queued bot audio."""

    samples: int


@dataclass(frozen=True)
class AudioDropped:
    """Bot audio the node could not play (format, queue full, call ending)."""

    samples: int
    detail: str


@dataclass(frozen=True)
class ProviderText:
    """A text frame from the provider after the start message, as received."""

    text: str
    received_at: float


@dataclass(frozen=True)
class CommandRejected:
    """The node refused a command (the reason names the rule)."""

    command_id: str
    reason: str


@dataclass(frozen=True)
class RecordsLost:
    """Records of this call that never reached the bus (the node's buffer overflowed)."""

    records: int
    first_record_seq: int
    last_record_seq: int
    audio_chunks: int


@dataclass(frozen=True)
class CaptureWithheld:
    """Caller audio the node withheld while capture was paused: accounted, not lost."""

    first_position: int
    samples: int
    frames: int  # binary frames withheld (they took no audio seq)
    first_received_at: float
    last_received_at: float


Event = (MarkResult | PlaybackCleared | AudioDropped | ProviderText | CommandRejected
         | RecordsLost | CaptureWithheld)


@dataclass(frozen=True)
class CallEnd:
    """How the call ended. ``reason`` is the lower-case EndReason name (``caller_hangup``,
    ``bot_hangup``, ``transferred``, ``node_lost``, ...), or ``handed_over`` when this
    instance lost the call's partition to another one (which carries on with it)."""

    reason: str
    detail: str = ""
    close_code: int = 0
    duration_ms: int = 0


def _nothing() -> None:
    pass


HANDED_OVER = CallEnd("handed_over", "the partition moved to another bot instance")

Send = Callable[[m.Command], Awaitable[None]]


class Call:
    """One live call. Read ``audio()`` (and, if you care, ``events()``); send commands
    with the methods below; ``ended`` resolves once with the ``CallEnd``.

    Commands are sent in the order the methods are awaited. ``mark`` waits until
    the node reports the mark reached or cleared (or the call ends).
    """

    def __init__(self, info: CallInfo, send: Send, *, audio_limit: int = 1000,
                 event_limit: int = 256) -> None:
        self.info = info
        self._send = send
        self._audio: Inbox[Audio] = Inbox(audio_limit)
        self._events: Inbox[Event] = Inbox(event_limit)
        self._marks: dict[str, deque[asyncio.Future[MarkResult]]] = {}
        self._ids = itertools.count(1)
        self.ended: asyncio.Future[CallEnd] = asyncio.get_running_loop().create_future()
        # Records the SDK skipped rather than handing them over: a stale backlog
        # when joining late, and records seen twice (redelivered after a rebalance).
        self.skipped_backlog = 0
        self.duplicates = 0

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def queued(self) -> int:
        """Records delivered to this call and not yet read by its handler."""
        return len(self._audio) + len(self._events)

    @property
    def audio_dropped(self) -> int:
        """Chunks dropped because the handler read audio slower than it came."""
        return self._audio.dropped

    # --- what the bot reads ---------------------------------------------------

    async def audio(self) -> AsyncIterator[Audio]:
        """Caller audio in order, until the call ends."""
        while (chunk := await self._audio.get()) is not None:
            yield chunk

    async def events(self) -> AsyncIterator[Event]:
        """Playback and provider events in order, until the call ends."""
        while (event := await self._events.get()) is not None:
            yield event

    # --- what the bot sends ---------------------------------------------------

    async def play(self, pcm: bytes | np.ndarray, sample_rate: int, *,
                   interruptible: bool = True, at_caller_ms: int = 0) -> None:
        """Queue audio for the caller (any supported rate; the node converts it).
        ``interruptible=False``: a ``clear`` does not cut it (disclosures).
        ``at_caller_ms``: the node sends it no earlier than when the caller's stream
        reached that point (``Audio.end_ms`` of a chunk, plus a delay): the timing holds
        whatever the bus's latency, if the command is sent that much ahead."""
        data = pcm.astype("<i2").tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
        await self._command(m.PlayAudio(pcm=data, sample_rate=sample_rate,
                                        uninterruptible=not interruptible,
                                        at_caller_ms=at_caller_ms))

    async def play_wav(self, source: str | Path | bytes, *, interruptible: bool = True) -> None:
        """Play a mono 16-bit PCM WAV file (a path, or its bytes) at its own rate."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        pcm, rate = wav.decode_wav(data)
        await self.play(pcm, rate, interruptible=interruptible)

    async def clear(self) -> None:
        """Drop the audio queued and not yet played (barge-in)."""
        await self._command(m.ClearAudio())

    async def mark(self, name: str) -> MarkResult:
        """Queue a mark after the audio queued so far; returns once it is reached or
        cleared (with how much of the audio before it was heard), or the call ended."""
        return await (await self.send_mark(name))

    async def send_mark(self, name: str) -> asyncio.Future[MarkResult]:
        """Queue a mark and return at once: the future resolves as ``mark`` would."""
        waiter: asyncio.Future[MarkResult] = asyncio.get_running_loop().create_future()
        if self.ended.done():
            waiter.set_result(MarkResult(name, MarkOutcome.ENDED))
            return waiter
        self._marks.setdefault(name, deque()).append(waiter)
        await self._command(m.Mark(name=name))
        return waiter

    async def hang_up(self) -> None:
        """Hang up after the audio queued so far has played."""
        await self._command(m.HangUp())

    async def transfer(self, parameters: Mapping[str, str] | Iterable[tuple[str, str]] = ()
                       ) -> None:
        """Transfer the call (after the queued audio) with the provider's parameters."""
        pairs = parameters.items() if isinstance(parameters, Mapping) else parameters
        await self._command(m.Transfer(parameters=tuple((str(k), str(v)) for k, v in pairs)))

    async def pause_capture(self) -> None:
        """Stop publishing the caller's audio (secrets spoken aloud); the gap is recorded."""
        await self._command(m.PauseCapture())

    async def resume_capture(self) -> None:
        await self._command(m.ResumeCapture())

    async def _command(self, body: m.CommandBody) -> None:
        if self.ended.done():
            return  # the node has forgotten the call; a command would only be dropped
        await self._send(m.Command(call_id=self.call_id, body=body,
                                   command_id=f"{type(body).__name__.lower()}-{next(self._ids)}"))

    # --- what the SDK feeds in ------------------------------------------------------

    def deliver_audio(self, chunk: Audio, done: Done) -> None:
        self._audio.put(chunk, done)

    def deliver_event(self, event: Event, done: Done) -> None:
        if isinstance(event, MarkResult):
            waiters = self._marks.get(event.name)
            if waiters:
                w = waiters.popleft()
                if not waiters:
                    del self._marks[event.name]
                if not w.done():
                    w.set_result(event)
        # Reading events() is optional: a bot that never does must not hold its
        # partition's commit back, so an event counts as handed once it is delivered.
        done()
        self._events.put(event, _nothing)

    def deliver_end(self, end: CallEnd) -> None:
        """The call is over: iterators finish with what they hold, marks still waiting end."""
        if self.ended.done():
            return
        self.ended.set_result(end)
        self._audio.close()
        self._events.close()
        for name, waiters in self._marks.items():
            for w in waiters:
                if not w.done():
                    w.set_result(MarkResult(name, MarkOutcome.ENDED))
        self._marks.clear()

    def abandon(self) -> None:
        """The handler is gone: hand over whatever it will never read."""
        self._audio.discard()
        self._events.discard()

    def release(self) -> None:
        """The call moved to another instance: what this handler did not read is left for
        the new owner (not handed over, so not committed here)."""
        self._audio.release()
        self._events.release()

