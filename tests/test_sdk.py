"""The bot SDK's Kafka-free parts: offsets, inboxes, the calls dispatcher, the Call object,
and the shipped playout model bots are tested against (gateway.testing.bots).

Records are built as protobuf, as the runner hands them over; each record's token
comes from a real ``PartitionOffsets``, so "handed over exactly once" is checked
through the commit point it allows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gateway import sdk, topics
from gateway.core import model as m
from gateway.proto.knowlarity.gateway.v1 import inbound_pb2 as pb
from gateway.sdk import translate
from gateway.sdk.calls import Calls, Limits
from gateway.sdk.inbox import Inbox
from gateway.sdk.offsets import PartitionOffsets
from gateway.testing import PlayoutModel, ScriptedCall, run_async

REPLY = "kgw.calls.commands.node-a"
HEADERS = {topics.HEADER_REPLY_TOPIC: REPLY.encode(), topics.HEADER_SAMPLE_RATE: b"8000",
           topics.HEADER_NODE_ID: b"node-a"}
PCM = bytes(320)  # 20 ms at 8 kHz


# --- offsets -----------------------------------------------------------------------


def test_commit_point_advances_only_past_contiguous_handed_records() -> None:
    """Two calls interleaved on one partition: the commit point waits for the slower one."""
    offsets = PartitionOffsets()
    assert offsets.commit_point is None
    a10, b11, a12, b13 = (offsets.received(o) for o in (10, 11, 12, 13))
    a10.done()
    assert offsets.commit_point == 11
    a12.done()  # call a is ahead; b's 11 still holds the partition back
    assert (offsets.commit_point, offsets.outstanding) == (11, 3)
    b11.done()
    assert (offsets.commit_point, offsets.outstanding) == (13, 1)
    b11.done()  # a second done changes nothing
    assert offsets.commit_point == 13
    b13.done()
    assert (offsets.commit_point, offsets.outstanding) == (14, 0)


def test_commit_point_starts_where_given() -> None:
    """A partition resumed at a committed offset allows that offset until more is handed."""
    offsets = PartitionOffsets(start=7)
    token = offsets.received(7)
    assert offsets.commit_point == 7
    token.done()
    assert offsets.commit_point == 8


# --- inbox --------------------------------------------------------------------------


def test_inbox_drops_oldest_beyond_its_bound_and_hands_them_over() -> None:
    """Beyond the limit the oldest item goes, counted, and its offset is handed over."""
    handed: list[str] = []
    inbox: Inbox[str] = Inbox(2)
    for item in "abc":
        inbox.put(item, lambda item=item: handed.append(item))
    assert (len(inbox), inbox.dropped, handed) == (2, 1, ["a"])

    async def take() -> list[str | None]:
        return [await inbox.get(), await inbox.get()]

    assert run_async(take()) == ["b", "c"]
    assert handed == ["a", "b", "c"]  # taken items are handed over as they are taken


def test_inbox_close_ends_iteration_after_what_it_holds() -> None:
    """After close: queued items are still taken, then None; a later put is handed at once."""
    handed: list[str] = []
    inbox: Inbox[str] = Inbox(10)
    inbox.put("a", lambda: handed.append("a"))
    inbox.close()
    inbox.put("b", lambda: handed.append("b"))
    assert (len(inbox), handed) == (1, ["b"])

    async def take() -> list[str | None]:
        return [await inbox.get(), await inbox.get()]

    assert run_async(take()) == ["a", None]
    assert handed == ["b", "a"]


def test_inbox_discard_hands_over_everything_undelivered() -> None:
    """discard: nobody will read; every queued item is handed over, and get returns None."""
    handed: list[str] = []
    inbox: Inbox[str] = Inbox(10)
    for item in "xy":
        inbox.put(item, lambda item=item: handed.append(item))
    inbox.discard()
    assert handed == ["x", "y"]
    assert run_async(inbox.get()) is None


def test_inbox_get_waits_for_a_put() -> None:
    """A reader waiting on an empty inbox wakes with the next item."""
    async def main() -> str | None:
        inbox: Inbox[str] = Inbox(10)
        reader = asyncio.create_task(inbox.get())
        await asyncio.sleep(0)
        assert not reader.done()
        inbox.put("late", lambda: None)
        return await reader

    assert run_async(main()) == "late"


# --- records as the runner hands them over --------------------------------------------


def started(call_id: str, seq: int = 0, rate: int = 8000) -> pb.InboundRecord:
    return pb.InboundRecord(
        call_id=call_id, node_id="node-a", time_unix_us=1_700_000_000_000_000, record_seq=seq,
        started=pb.CallStarted(reply_topic=REPLY, sample_rate=rate, caller="+919800000001",
                               callee="+918000000002",
                               direction=pb.CallDirection.Value("CALL_DIRECTION_INBOUND"),
                               provider_campaign="spring",
                               provider_fields_json=json.dumps({"call_id": call_id, "lang": "hi"})))


def audio(call_id: str, seq: int, chunk: int, received_s: float = 0.0) -> pb.InboundRecord:
    return pb.InboundRecord(call_id=call_id, record_seq=seq, audio=pb.CallerAudio(
        seq=chunk, media_position_samples=160 * chunk, received_unix_us=round(received_s * 1e6),
        pcm=PCM, sample_rate=8000))


def ended(call_id: str, seq: int, reason: str = "CALLER_HANGUP") -> pb.InboundRecord:
    return pb.InboundRecord(call_id=call_id, record_seq=seq, ended=pb.CallEnded(
        reason=pb.EndReason.Value(f"END_REASON_{reason}"), detail="bye", duration_ms=1234))


def mark_reached(call_id: str, seq: int, name: str, heard_ms: int) -> pb.InboundRecord:
    return pb.InboundRecord(call_id=call_id, record_seq=seq, playback=pb.PlaybackEvent(
        kind=pb.PlaybackEventKind.Value("PLAYBACK_EVENT_KIND_MARK_REACHED"), mark_name=name,
        heard_ms=heard_ms))


class Bot:
    """A handler that keeps what each call saw; ``behaviour`` may stop reading or raise."""

    def __init__(self, behaviour: Callable[[sdk.Call, sdk.Audio], Any] | None = None) -> None:
        self.runs: dict[str, int] = {}
        self.infos: dict[str, sdk.CallInfo] = {}
        self.chunks: dict[str, list[int]] = {}
        self.ends: dict[str, sdk.CallEnd] = {}
        self.cancelled: list[str] = []
        self._behaviour = behaviour

    async def __call__(self, call: sdk.Call) -> None:
        cid = call.call_id
        self.runs[cid] = self.runs.get(cid, 0) + 1
        self.infos[cid] = call.info
        self.chunks[cid] = []
        try:
            async for chunk in call.audio():
                self.chunks[cid].append(chunk.seq)
                if self._behaviour is not None:
                    await self._behaviour(call, chunk)
            self.ends[cid] = await call.ended
        except asyncio.CancelledError:
            self.cancelled.append(cid)
            raise


class Harness:
    """``Calls`` fed records with tokens from one ``PartitionOffsets`` per partition."""

    def __init__(self, handler: sdk.Handler, limits: Limits | None = None,
                 now: float = 1000.0) -> None:
        self.now = now
        self.sent: list[m.Command] = []
        self.calls = Calls(handler, self._send, limits or Limits(), clock=lambda: self.now)
        self.offsets: dict[int, PartitionOffsets] = {}
        self._next: dict[int, int] = {}

    async def _send(self, cmd: m.Command) -> None:
        self.sent.append(cmd)

    def feed(self, rec: pb.InboundRecord, partition: int = 0,
             headers: dict[str, bytes] | None = None) -> None:
        offsets = self.offsets.setdefault(partition, PartitionOffsets())
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        self.calls.on_record(partition, rec, headers or {}, offsets.received(offset))

    def commit_point(self, partition: int = 0) -> int | None:
        return self.offsets[partition].commit_point


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# --- calls ---------------------------------------------------------------------------


def test_started_opens_a_call_and_runs_its_handler_once() -> None:
    """started, two chunks, ended: one handler run with the start's fields, every record
    handed over, the end's reason."""
    bot = Bot()

    async def main() -> Harness:
        h = Harness(bot)
        h.feed(started("c1"))
        h.feed(audio("c1", 1, 0))
        h.feed(audio("c1", 2, 1))
        await turns()
        h.feed(ended("c1", 3))
        await turns()
        return h

    h = run_async(main())
    assert bot.runs == {"c1": 1}
    info = bot.infos["c1"]
    assert (info.reply_topic, info.sample_rate, info.node_id, info.caller, info.callee,
            info.direction, info.campaign) == (REPLY, 8000, "node-a", "+919800000001",
                                               "+918000000002", "inbound", "spring")
    assert info.provider_fields == {"call_id": "c1", "lang": "hi"}
    assert info.started_at == 1_700_000_000.0
    assert (info.joined_late, info.start_known) == (False, True)
    assert bot.chunks["c1"] == [0, 1]
    assert bot.ends["c1"] == sdk.CallEnd("caller_hangup", "bye", 0, 1234)
    assert h.commit_point() == 4 and len(h.calls) == 0
    assert (h.calls.stats.calls_started, h.calls.stats.calls_ended) == (1, 1)


def test_unknown_call_with_headers_is_joined_late_without_its_start() -> None:
    """Audio of a call never seen, with the three headers: opened late, start unknown."""
    bot = Bot()

    async def main() -> Harness:
        h = Harness(bot, now=50.0)
        h.feed(audio("c2", 7, 5, received_s=49.5), headers=HEADERS)
        await turns()
        return h

    h = run_async(main())
    info = bot.infos["c2"]
    assert (info.reply_topic, info.sample_rate, info.node_id) == (REPLY, 8000, "node-a")
    assert (info.joined_late, info.start_known, info.caller) == (True, False, "")
    assert bot.chunks["c2"] == [5]
    assert h.calls.stats.calls_joined_late == 1


def test_a_late_joiner_learns_the_start_from_the_call_state() -> None:
    """With the call's start record learned for its partition, a late join has its fields."""
    bot = Bot()

    async def main() -> None:
        h = Harness(bot, now=50.0)
        h.calls.learn_starts(3, {"c3": started("c3", rate=16000)})
        h.feed(audio("c3", 4, 2, received_s=49.9), partition=3, headers=HEADERS)
        await turns()

    run_async(main())
    info = bot.infos["c3"]
    assert (info.joined_late, info.start_known) == (True, True)
    assert (info.caller, info.campaign, info.sample_rate) == ("+919800000001", "spring", 16000)


def test_unknown_call_without_headers_or_start_is_skipped_and_handed_over() -> None:
    """No start, no headers: nothing to answer with; the record is counted and handed over;
    an ended of a call never seen opens nothing."""
    bot = Bot()

    async def main() -> Harness:
        h = Harness(bot)
        h.feed(audio("c4", 2, 1))
        h.feed(ended("c5", 9), headers=HEADERS)
        await turns()
        return h

    h = run_async(main())
    assert bot.runs == {}
    assert (h.calls.stats.records_without_call, h.commit_point(), len(h.calls)) == (1, 2, 0)


def test_a_late_joiner_skips_the_stale_backlog_until_fresh_audio() -> None:
    """Joined at 100 s with a 2 s limit: chunks received at 95 and 97.9 are skipped (and
    counted), the one at 98.5 is delivered, and so is an older one after it."""
    bot = Bot()

    async def main() -> tuple[Harness, sdk.Call]:
        h = Harness(bot, Limits(max_backlog_s=2.0), now=100.0)
        h.feed(audio("c6", 10, 0, received_s=95.0), headers=HEADERS)
        h.feed(audio("c6", 11, 1, received_s=97.9), headers=HEADERS)
        h.feed(audio("c6", 12, 2, received_s=98.5), headers=HEADERS)
        h.feed(audio("c6", 13, 3, received_s=97.0), headers=HEADERS)
        await turns()
        call = h.calls.get("c6")
        assert call is not None
        return h, call

    h, call = run_async(main())
    assert bot.chunks["c6"] == [2, 3]
    assert (call.skipped_backlog, h.calls.stats.skipped_backlog) == (2, 2)
    assert h.commit_point() == 4


def test_a_call_that_started_here_is_never_skipped_as_backlog() -> None:
    """The stale-backlog rule is for late joiners: old audio of a call seen starting plays."""
    bot = Bot()

    async def main() -> None:
        h = Harness(bot, Limits(max_backlog_s=2.0), now=100.0)
        h.feed(started("c7"))
        h.feed(audio("c7", 1, 0, received_s=10.0))
        await turns()

    run_async(main())
    assert bot.chunks["c7"] == [0]


def test_duplicates_by_record_seq_are_skipped_and_counted() -> None:
    """Redelivered records (record_seq not above the last handed, a second started) are
    skipped, counted on the call and the stats, and handed over."""
    bot = Bot()

    async def main() -> tuple[Harness, sdk.Call]:
        h = Harness(bot)
        for rec in (started("c8"), audio("c8", 1, 0), audio("c8", 2, 1), audio("c8", 2, 1),
                    audio("c8", 1, 0), started("c8"), audio("c8", 3, 2)):
            h.feed(rec)
        await turns()
        call = h.calls.get("c8")
        assert call is not None
        return h, call

    h, call = run_async(main())
    assert bot.chunks["c8"] == [0, 1, 2]
    assert (call.duplicates, h.calls.stats.duplicates) == (3, 3)
    assert h.commit_point() == 7


def test_revoked_partition_ends_its_calls_as_handed_over() -> None:
    """Revoking partition 0: its call ends handed_over, its handler is cancelled, its unread
    records are left for the new owner (the commit point stays before them); the call on
    partition 1 carries on."""
    async def never(call: sdk.Call, chunk: sdk.Audio) -> None:
        if call.call_id == "p0":
            await asyncio.Event().wait()  # stops reading: records queue up behind it

    bot = Bot(never)

    async def main() -> tuple[Harness, list[asyncio.Task[None]], sdk.CallEnd, list[str]]:
        h = Harness(bot)
        h.feed(started("p0"), partition=0)
        h.feed(started("p1"), partition=1)
        for seq in (1, 2, 3):
            h.feed(audio("p0", seq, seq - 1), partition=0)
        await turns()
        call = h.calls.get("p0")
        assert call is not None
        assert h.commit_point(0) == 2  # the handler took chunk 0; 1 and 2 wait
        tasks = h.calls.on_revoked({0})
        await asyncio.gather(*tasks, return_exceptions=True)
        h.feed(audio("p1", 1, 0), partition=1)
        await turns()
        return h, tasks, call.ended.result(), list(bot.cancelled)  # before the loop closes

    h, tasks, end, cancelled = run_async(main())
    assert end is sdk.HANDED_OVER
    assert len(tasks) == 1 and tasks[0].cancelled()
    assert cancelled == ["p0"]
    assert h.commit_point(0) == 2  # chunks 1 and 2 are read again by the partition's new owner
    assert h.calls.get("p0") is None and bot.chunks["p1"] == [0]
    assert h.calls.stats.calls_handed_over == 1


def test_revoking_forgets_the_partitions_known_starts() -> None:
    """A start learned for a revoked partition is not used if the partition comes back."""
    bot = Bot()

    async def main() -> None:
        h = Harness(bot, now=50.0)
        h.calls.learn_starts(2, {"c9": started("c9")})
        h.calls.on_revoked({2})
        h.feed(audio("c9", 3, 1, received_s=49.9), partition=2, headers=HEADERS)
        await turns()

    run_async(main())
    assert bot.infos["c9"].start_known is False


def test_a_handler_that_raises_stops_only_its_call() -> None:
    """Call a's handler raises on its first chunk: counted; a's later records are handed
    over unread; call b's chunks all arrive."""
    async def explode(call: sdk.Call, chunk: sdk.Audio) -> None:
        if call.call_id == "a":
            raise RuntimeError("bot bug")

    bot = Bot(explode)

    async def main() -> Harness:
        h = Harness(bot)
        h.feed(started("a"))
        h.feed(started("b"))
        h.feed(audio("a", 1, 0))
        await turns()
        h.feed(audio("a", 2, 1))
        h.feed(audio("b", 1, 0))
        h.feed(audio("a", 3, 2))
        h.feed(audio("b", 2, 1))
        await turns()
        return h

    h = run_async(main())
    assert h.calls.stats.handler_errors == 1
    assert bot.chunks == {"a": [0], "b": [0, 1]}
    assert h.commit_point() == 7


def test_forget_idle_drops_a_call_silent_for_forget_after_s() -> None:
    """A call with no record for 10 s is forgotten at 10 s, not at 9.9 s."""
    bot = Bot()

    async def main() -> tuple[Harness, int, sdk.Call]:
        h = Harness(bot, Limits(forget_after_s=10.0), now=0.0)
        h.feed(started("c10"))
        await turns()
        call = h.calls.get("c10")
        assert call is not None
        h.now = 9.9
        h.calls.forget_idle()
        before = len(h.calls)
        h.now = 10.0
        h.calls.forget_idle()
        await turns()
        return h, before, call

    h, before, call = run_async(main())
    assert (before, len(h.calls), h.calls.stats.calls_forgotten) == (1, 0, 1)
    assert call.ended.result().reason == "forgotten"
    assert bot.ends["c10"].reason == "forgotten"


def test_a_playback_record_resolves_the_handlers_mark() -> None:
    """A MARK_REACHED record reaches the call's waiting mark with its heard_ms."""
    results: list[sdk.MarkResult] = []

    async def handler(call: sdk.Call) -> None:
        results.append(await call.mark("greeting"))

    async def main() -> Harness:
        h = Harness(handler)
        h.feed(started("c11"))
        await turns()
        h.feed(mark_reached("c11", 1, "greeting", 1460))
        await turns()
        return h

    h = run_async(main())
    assert results == [sdk.MarkResult("greeting", sdk.MarkOutcome.REACHED, 1460)]
    assert [type(c.body) for c in h.sent] == [m.Mark]


def test_an_event_the_bot_never_reads_does_not_hold_the_commit_back() -> None:
    """The handler reads audio only: a playback event between two chunks is handed over on
    delivery, so the commit point passes it once the second chunk is read."""
    bot = Bot()

    async def main() -> Harness:
        h = Harness(bot)
        h.feed(started("c"))
        h.feed(audio("c", 1, 0))
        h.feed(mark_reached("c", 2, "greeting", 300))
        h.feed(audio("c", 3, 1))
        await turns()
        return h

    h = run_async(main())
    assert bot.chunks["c"] == [0, 1]
    assert h.commit_point() == 4


def test_capture_withheld_record_becomes_an_event() -> None:
    """A CaptureWithheld record is handed to the bot as sdk.CaptureWithheld."""
    rec = pb.InboundRecord(call_id="c", record_seq=5)
    rec.capture_withheld.first_media_position_samples = 8000
    rec.capture_withheld.samples = 1600
    rec.capture_withheld.frames = 5
    assert translate.event(rec) == sdk.CaptureWithheld(8000, 1600, 5, 0.0, 0.0)


# --- the Call object ---------------------------------------------------------------


def make_call() -> tuple[sdk.Call, list[m.Command]]:
    sent: list[m.Command] = []

    async def send(cmd: m.Command) -> None:
        sent.append(cmd)

    return sdk.Call(sdk.CallInfo("c", REPLY, 8000), send), sent


def test_mark_resolves_from_its_event_in_order_of_names() -> None:
    """Two marks of one name resolve in the order sent; the events still reach events()."""
    async def main() -> tuple[list[sdk.MarkResult], list[sdk.Event], list[m.Command]]:
        call, sent = make_call()
        first = await call.send_mark("m")
        second = await call.send_mark("m")
        call.deliver_event(sdk.MarkResult("m", sdk.MarkOutcome.REACHED, 300), lambda: None)
        assert first.done() and not second.done()
        call.deliver_event(sdk.MarkResult("m", sdk.MarkOutcome.CLEARED, 40), lambda: None)
        call.deliver_end(sdk.CallEnd("caller_hangup"))
        events = [e async for e in call.events()]
        return [first.result(), second.result()], events, sent

    results, events, sent = run_async(main())
    assert results == [sdk.MarkResult("m", sdk.MarkOutcome.REACHED, 300),
                       sdk.MarkResult("m", sdk.MarkOutcome.CLEARED, 40)]
    assert events == results
    assert [(c.command_id, c.body) for c in sent] == [("mark-1", m.Mark("m")),
                                                      ("mark-2", m.Mark("m"))]


def test_a_pending_mark_ends_as_ended_when_the_call_ends() -> None:
    """A mark waiting when the call ends resolves ENDED; one asked for after resolves ENDED
    at once, and sends nothing."""
    async def main() -> tuple[sdk.MarkResult, sdk.MarkResult, int]:
        call, sent = make_call()
        waiting = await call.send_mark("a")
        call.deliver_end(sdk.CallEnd("bot_hangup"))
        late = await call.mark("b")
        return waiting.result(), late, len(sent)

    waiting, late, sent = run_async(main())
    assert waiting == sdk.MarkResult("a", sdk.MarkOutcome.ENDED, 0)
    assert late == sdk.MarkResult("b", sdk.MarkOutcome.ENDED, 0)
    assert sent == 1


def test_commands_after_the_end_are_not_sent() -> None:
    """Before the end: each method's command, numbered; after it: nothing goes out."""
    async def main() -> list[m.Command]:
        call, sent = make_call()
        await call.play(np.array([1, -2], dtype=np.int16), 8000)
        await call.transfer({"queue": 7})
        call.deliver_end(sdk.CallEnd("transferred"))
        await call.play(b"\x00\x00", 8000)
        await call.clear()
        await call.hang_up()
        return sent

    sent = run_async(main())
    assert [(c.call_id, c.command_id, c.body) for c in sent] == [
        ("c", "playaudio-1", m.PlayAudio(b"\x01\x00\xfe\xff", 8000)),
        ("c", "transfer-2", m.Transfer((("queue", "7"),))),
    ]


def test_audio_iteration_ends_with_the_call_after_what_it_holds() -> None:
    """Chunks delivered before the end are still read; then the iterator stops."""
    async def main() -> list[int]:
        call, _ = make_call()
        for seq in (0, 1):
            call.deliver_audio(sdk.Audio(PCM, seq, 160 * seq, 8000, 0.0), lambda: None)
        call.deliver_end(sdk.CallEnd("caller_hangup"))
        return [c.seq async for c in call.audio()]

    assert run_async(main()) == [0, 1]


# --- the playout model bots are tested against --------------------------------------


def tone(seconds: float, rate: int) -> bytes:
    return np.full(round(seconds * rate), 500, dtype="<i2").tobytes()


def test_model_reaches_marks_as_their_audio_plays() -> None:
    """1 s then 0.5 s at 8 kHz, a mark after each: reached at 1.0 s and 1.5 s with their
    segments' ms; the played audio in order."""
    p = PlayoutModel(8000)
    p.play(tone(1.0, 8000), 8000, True, now=0.0)
    p.marker(m.Mark("one"))
    p.play(tone(0.5, 8000), 8000, True, now=0.2)
    p.marker(m.Mark("two"))
    assert p.advance(0.99) == []
    assert p.advance(1.0) == [sdk.MarkResult("one", sdk.MarkOutcome.REACHED, 1000)]
    assert p.advance(1.5) == [sdk.MarkResult("two", sdk.MarkOutcome.REACHED, 500)]
    assert [len(pcm) for pcm, _ in p.played] == [16000, 8000]


def test_model_clear_keeps_uninterruptible_audio() -> None:
    """At 0.25 s a clear cuts the playing 1 s clip (0.25 s heard) and the clip queued after
    the uninterruptible one; the uninterruptible 0.5 s plays next, its mark reached at 0.75 s;
    the marks of cut audio come back CLEARED, the empty one behind them too."""
    p = PlayoutModel(8000)
    p.play(tone(1.0, 8000), 8000, True, now=0.0)
    p.marker(m.Mark("cut"))
    p.play(tone(0.5, 8000), 8000, False, now=0.0)
    p.marker(m.Mark("kept"))
    p.play(tone(0.5, 8000), 8000, True, now=0.0)
    p.marker(m.Mark("dropped"))
    p.marker(m.Mark("empty"))
    assert p.clear(0.25) == [
        sdk.PlaybackCleared(6000 + 4000),
        sdk.MarkResult("cut", sdk.MarkOutcome.CLEARED, 250),
        sdk.MarkResult("dropped", sdk.MarkOutcome.CLEARED, 0),
        sdk.MarkResult("empty", sdk.MarkOutcome.CLEARED, 0),
    ]
    assert p.advance(0.74) == []
    assert p.advance(0.75) == [sdk.MarkResult("kept", sdk.MarkOutcome.REACHED, 500)]
    assert [len(pcm) // 2 for pcm, _ in p.played] == [2000, 4000]


def test_model_counts_at_the_calls_rate_and_ends_on_hang_up() -> None:
    """1 s at 22050 Hz in a 16 kHz call: cleared at 0.5 s it drops 8000 call samples; a
    hang-up queued after new audio is carried out once that has played."""
    p = PlayoutModel(16000)
    p.play(tone(1.0, 22050), 22050, True, now=0.0)
    assert p.clear(0.5) == [sdk.PlaybackCleared(8000)]
    p.play(tone(0.2, 16000), 16000, True, now=0.5)
    p.marker(m.HangUp())
    assert p.advance(0.69) == []
    assert p.advance(0.7) == [m.HangUp()]


# --- the scripted call ---------------------------------------------------------------


def test_scripted_call_in_real_time_plays_at_the_wall_clocks_pace() -> None:
    """realtime: with no caller audio fed, 200 ms of bot audio still plays in about 200 ms of
    wall time; the mark then comes back REACHED and the hang-up is carried out."""
    results: list[sdk.MarkResult] = []

    async def handler(call: sdk.Call) -> None:
        await call.play(tone(0.2, 8000), 8000)
        results.append(await call.mark("done"))
        await call.hang_up()

    async def main() -> tuple[ScriptedCall, float]:
        loop = asyncio.get_running_loop()
        async with ScriptedCall(handler, sample_rate=8000, realtime=True) as sc:
            begun = loop.time()
            await sc.wait_for(m.HangUp, timeout=2.0)
            return sc, loop.time() - begun

    sc, took = run_async(main())
    assert results == [sdk.MarkResult("done", sdk.MarkOutcome.REACHED, 200)]
    assert 0.19 <= took < 1.0
    assert sc.hung_up


def test_scripted_call_withholds_audio_while_capture_is_paused() -> None:
    """Pause after the first chunk, resume after the fourth: chunks 2-4 are withheld (one
    CaptureWithheld: from sample 160, 480 samples, 3 chunks) and the seq stays gap-free."""
    seen: list[tuple[int, int]] = []

    async def handler(call: sdk.Call) -> None:
        async for chunk in call.audio():
            seen.append((chunk.seq, chunk.position))
            if chunk.seq == 0:
                await call.pause_capture()

    async def main() -> ScriptedCall:
        async with ScriptedCall(handler, sample_rate=8000, realtime=False) as sc:
            await sc.silence(0.08)
            await sc.call.resume_capture()
            await sc.silence(0.04)
        return sc

    sc = run_async(main())
    assert seen == [(0, 0), (1, 640), (2, 800)]
    [withheld] = sc.events
    assert isinstance(withheld, sdk.CaptureWithheld)
    assert (withheld.first_position, withheld.samples, withheld.frames) == (160, 480, 3)
    assert withheld.last_received_at - withheld.first_received_at == pytest.approx(0.04)


def test_scripted_call_raises_what_the_handler_raised() -> None:
    """A handler's exception surfaces from wait_for, and from the block if not caught."""
    async def handler(call: sdk.Call) -> None:
        raise LookupError("no such prompt")

    async def main() -> None:
        async with ScriptedCall(handler, realtime=False) as sc:
            with pytest.raises(LookupError):
                await sc.wait_for(m.HangUp, timeout=1.0)

    with pytest.raises(LookupError, match="no such prompt"):
        run_async(main())


def test_scripted_call_wait_for_names_what_was_sent() -> None:
    """wait_for gives up after its timeout, listing the commands that did come."""
    async def handler(call: sdk.Call) -> None:
        await call.clear()
        await call.ended

    async def main() -> None:
        async with ScriptedCall(handler, realtime=False) as sc:
            await sc.wait_for(m.HangUp, timeout=0.05)

    with pytest.raises(TimeoutError, match=r"sent: \['ClearAudio'\]"):
        run_async(main())
