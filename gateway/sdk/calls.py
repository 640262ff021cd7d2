"""The calls one bot instance holds: records in, one ``Call`` and one handler task per call.

Kafka-free (the runner feeds it decoded records with their partition and
offset token), so rebalance, late join, duplicates and the stale-backlog rule
are tested without a broker.

- A ``started`` record opens a call. Any other record of an unknown call opens
  it *late* (``joined_late``), from the record headers and, where the
  call-state topic had it, the start fields: the instance took over a
  partition mid-call, or restarted.
- A late-joined call answers live audio: caller audio older than
  ``max_backlog_s`` (by the time the node received it) is skipped until the
  first fresh chunk.
- A record seen twice (``record_seq`` not above the last one handed for that
  call: redelivered after a rebalance) is skipped and counted.
- Every record is handed over exactly once to the offsets, delivered or skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.proto.knowlarity.gateway.v1 import inbound_pb2
from gateway.sdk import translate
from gateway.sdk.call import HANDED_OVER, Call, CallEnd, CallInfo, Send
from gateway.sdk.offsets import Token

log = logging.getLogger(__name__)

Handler = Callable[[Call], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_backlog_s: float = 2.0  # a late joiner skips caller audio older than this
    audio_chunks: int = 1000  # per call, queued for a handler that reads slowly (~20 s)
    events: int = 256  # per call
    forget_after_s: float = 600.0  # a call with no record for this long is dropped


@dataclass
class Stats:
    records: int = 0
    calls_started: int = 0
    calls_joined_late: int = 0
    calls_ended: int = 0
    calls_handed_over: int = 0
    calls_forgotten: int = 0
    records_without_call: int = 0  # no start seen and no headers to join from
    skipped_backlog: int = 0
    duplicates: int = 0
    handler_errors: int = 0


@dataclass
class _Held:
    call: Call
    partition: int
    task: asyncio.Task[None] | None
    last_seq: int = -1
    last_seen: float = 0.0
    catching_up: bool = False  # joined late and still skipping a stale backlog
    moved: bool = False  # its partition was revoked: unread records are the new owner's


class Calls:
    def __init__(self, handler: Handler, send: Send, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.time) -> None:
        self._handler = handler
        self._send = send
        self._limits = limits
        self._clock = clock
        self._calls: dict[str, _Held] = {}
        # Start records of live calls from the call-state topic, by partition: what a
        # late joiner knows of a call it never saw start.
        self._known_starts: dict[int, dict[str, inbound_pb2.InboundRecord]] = {}
        self.stats = Stats()

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, call_id: str) -> Call | None:
        held = self._calls.get(call_id)
        return held.call if held else None

    def learn_starts(self, partition: int, starts: Mapping[str, inbound_pb2.InboundRecord]
                     ) -> None:
        """The live calls' start records found on the call-state topic for ``partition``."""
        self._known_starts[partition] = dict(starts)

    def on_record(self, partition: int, rec: inbound_pb2.InboundRecord,
                  headers: Mapping[str, bytes], token: Token) -> None:
        self.stats.records += 1
        kind = rec.WhichOneof("body")
        held = self._calls.get(rec.call_id)
        if held is None:
            held = self._open(partition, rec, headers, kind)
            if held is None:
                token.done()
                return
        elif kind == "started" or rec.record_seq <= held.last_seq:
            held.call.duplicates += 1
            self.stats.duplicates += 1
            token.done()
            return
        held.last_seq = rec.record_seq
        held.last_seen = self._clock()
        self._deliver(held, rec, kind, token)

    def _open(self, partition: int, rec: inbound_pb2.InboundRecord,
              headers: Mapping[str, bytes], kind: str | None) -> _Held | None:
        if kind == "started":
            info = translate.info_from_started(rec)
            self.stats.calls_started += 1
        elif kind == "ended":
            return None  # nothing left to answer
        else:
            info = self._late_info(partition, rec.call_id, headers)
            if info is None:
                self.stats.records_without_call += 1
                return None
            self.stats.calls_joined_late += 1
        call = Call(info, self._send, audio_limit=self._limits.audio_chunks,
                    event_limit=self._limits.events)
        held = _Held(call, partition, None, last_seen=self._clock(),
                     catching_up=info.joined_late)
        self._calls[rec.call_id] = held
        held.task = asyncio.create_task(self._run(held), name=f"call-{rec.call_id}")
        return held

    def _late_info(self, partition: int, call_id: str,
                   headers: Mapping[str, bytes]) -> CallInfo | None:
        start = self._known_starts.get(partition, {}).get(call_id)
        if start is not None:
            return translate.info_from_started(start, joined_late=True)
        return translate.info_from_headers(call_id, headers)

    def _deliver(self, held: _Held, rec: inbound_pb2.InboundRecord, kind: str | None,
                 token: Token) -> None:
        call = held.call
        if kind == "audio":
            chunk = translate.audio(rec, call.info.sample_rate)
            if held.catching_up:
                if self._clock() - chunk.received_at > self._limits.max_backlog_s:
                    call.skipped_backlog += 1
                    self.stats.skipped_backlog += 1
                    token.done()
                    return
                held.catching_up = False
            call.deliver_audio(chunk, token.done)
        elif kind == "ended":
            token.done()
            self._end(rec.call_id, translate.end(rec))
            self.stats.calls_ended += 1
        elif kind == "started":
            token.done()
        else:
            event = translate.event(rec)
            if event is None:
                token.done()
            else:
                call.deliver_event(event, token.done)

    def _end(self, call_id: str, end: CallEnd) -> None:
        held = self._calls.pop(call_id, None)
        if held is not None:
            held.call.deliver_end(end)

    async def _run(self, held: _Held) -> None:
        try:
            await self._handler(held.call)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.handler_errors += 1
            log.exception("event=handler_failed call_id=%s", held.call.call_id,
                          extra={"call_id": held.call.call_id})
        finally:
            # Whatever the handler left unread is handed over, so offsets move on; unless
            # the call moved, and its next owner reads those records again.
            if not held.moved:
                held.call.abandon()

    async def drain(self, partitions: set[int], timeout_s: float) -> None:
        """Give the handlers of calls on ``partitions`` up to ``timeout_s`` to read what is
        already queued for them, so that a move or a stop commits it rather than have the
        next owner read it again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(h.call.queued for h in self._calls.values() if h.partition in partitions) \
                and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def on_revoked(self, partitions: set[int]) -> list[asyncio.Task[None]]:
        """Calls on partitions another instance now owns end here as ``handed_over``; what
        their handlers had not read yet is left unhanded, so the commit stops before it
        and the new owner reads it (at-least-once across the move)."""
        tasks = []
        for call_id, held in list(self._calls.items()):
            if held.partition in partitions:
                held.moved = True
                self._end(call_id, HANDED_OVER)
                self.stats.calls_handed_over += 1
                held.call.release()
                if held.task is not None:
                    held.task.cancel()
                    tasks.append(held.task)
        for p in partitions:
            self._known_starts.pop(p, None)
        return tasks

    def forget_idle(self) -> None:
        """Drop calls with no record for ``forget_after_s`` (their end was lost)."""
        now = self._clock()
        for call_id, held in list(self._calls.items()):
            if now - held.last_seen >= self._limits.forget_after_s:
                self._end(call_id, CallEnd("forgotten", f"no record for "
                                                        f"{self._limits.forget_after_s:g} s"))
                self.stats.calls_forgotten += 1

    async def close(self, drain_s: float = 0.0) -> None:
        """Stop every handler (the bot is stopping), after up to ``drain_s`` for them to read
        what is queued."""
        partitions = {h.partition for h in self._calls.values()}
        await self.drain(partitions, drain_s)
        tasks = self.on_revoked(partitions)
        await asyncio.gather(*tasks, return_exceptions=True)
