"""One call's records placed on one timeline: pure, records in, a frozen ``Timeline`` out.

The mapping (sample 0 is ``origin_us``, the earliest of the ``started`` record's time,
the caller's clock ``t0`` and the first bot clip's send time):

- Caller: a chunk at media position ``p`` sits at ``t0 + p / rate``, with ``t0`` the
  least of ``received_unix_us - position / rate`` over the chunks. Network delay only
  ever makes a chunk late, so the least delayed one pins the caller's clock; the PCM
  is copied bit for bit, sample ``p`` at ``caller_offset + p``.
- Bot: the provider plays a clip when it arrives, after whatever it still has
  queued, so a clip starts at ``max(its sent time, end of the previous clip)``. A
  jump in the bot's ``media_position_samples`` is audio lost on the way to the bus
  (an ``OutboundDropped`` says so): it is left silent for its length, as if played.
- Gaps: a jump in the caller's positions is ``withheld`` when a ``capture_withheld``
  covers it, else ``lost``; caller audio missing at the end (``ended.audio_samples``
  past the last chunk) is lost too. Loss notes themselves are listed with their time.
- Talk time: a 20 ms window of a channel is speech when its RMS is at least
  ``gateway.core.turns.THRESHOLD_RMS`` (500, about -36 dBFS); speech windows less
  than ``HANGOVER_MS`` (500 ms) apart form one segment.
- Turns: the node's own meter (``gateway.core.turns.TurnMeter``), fed the caller
  chunks at their received times and the bot clips at their sent times, in time
  order: end of caller speech to the first bot clip sent after it. So the figures
  are the node's live ones (``ended.turn_latency_ms``, listed beside them) unless
  audio was lost or withheld: the node metered what the bus never got.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway import records
from gateway.core import model as m
from gateway.core.turns import HANGOVER_MS, THRESHOLD_RMS, TurnMeter, mean_square
from gateway.stats import percentiles

__all__ = ["Clip", "Event", "Gap", "Segment", "Timeline", "Turn", "build"]

WINDOW_MS = 20


class NoCall(ValueError):
    """The records hold nothing of the call (no started, audio or bot clip)."""


@dataclass(frozen=True)
class Clip:
    """One bot clip as the provider played it: ``start``/``end`` in timeline samples."""

    start: int
    end: int
    sent_s: float
    media_position_samples: int


@dataclass(frozen=True)
class Event:
    """A point on the timeline: a mark, a clear, a control frame, a loss note, the end."""

    at_s: float
    kind: str  # mark_reached, mark_cleared, cleared, audio_dropped, hang_up, ..., ended
    label: str
    heard_ms: int | None = None
    samples: int | None = None


@dataclass(frozen=True)
class Gap:
    """Audio of one side that was never on the bus, left silent: timeline samples."""

    side: str  # "caller" or "bot"
    start: int
    end: int
    why: str  # "lost" or "withheld"


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Turn:
    caller_end_s: float
    bot_start_s: float
    latency_ms: float


@dataclass(frozen=True)
class Timeline:
    """Both sides of one call on one clock; ``summary()`` is what the JSON holds."""

    call_id: str
    rate: int
    origin_us: int
    caller_offset: int  # timeline sample of caller media position 0
    left: np.ndarray  # int16, the caller
    right: np.ndarray  # int16, the bot as played
    clips: tuple[Clip, ...]
    events: tuple[Event, ...]
    gaps: tuple[Gap, ...]
    caller_speech: tuple[Segment, ...]
    bot_speech: tuple[Segment, ...]
    turns: tuple[Turn, ...]
    start: dict[str, Any]
    end: dict[str, Any] | None

    @property
    def duration_s(self) -> float:
        return len(self.left) / self.rate

    def seconds(self, sample: int) -> float:
        return round(sample / self.rate, 4)

    def summary(self) -> dict[str, Any]:
        latencies = [t.latency_ms for t in self.turns]
        return {
            "call_id": self.call_id,
            "start": self.start,
            "duration_s": round(self.duration_s, 3),
            "end": self.end,
            "talk_s": {"caller": _talk(self.caller_speech), "bot": _talk(self.bot_speech)},
            "speech_detector": {"window_ms": WINDOW_MS, "rms_at_least": THRESHOLD_RMS,
                                "hangover_ms": HANGOVER_MS},
            "turns": [{"caller_end_s": t.caller_end_s, "bot_start_s": t.bot_start_s,
                       "latency_ms": t.latency_ms} for t in self.turns],
            "turn_latency_ms": percentiles(latencies, (50, 95), ndigits=1),
            "bot_clips": len(self.clips),
            "barge_ins": [_event(e) for e in self.events if e.kind == "cleared"],
            "marks": [_event(e) for e in self.events if e.kind.startswith("mark_")],
            "controls": [_event(e) for e in self.events
                         if e.kind in ("hang_up", "transfer", "kill_audio")],
            "loss_notes": [_event(e) for e in self.events if e.kind.startswith("dropped")],
            "lost": [{"side": g.side, "why": g.why, "start_s": self.seconds(g.start),
                      "end_s": self.seconds(g.end)} for g in self.gaps],
        }


def _talk(segments: Sequence[Segment]) -> float:
    return round(sum(s.end_s - s.start_s for s in segments), 3)


def _event(e: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"at_s": e.at_s, "kind": e.kind, "label": e.label}
    if e.heard_ms is not None:
        out["heard_ms"] = e.heard_ms
    if e.samples is not None:
        out["samples"] = e.samples
    return out


def build(inbound: Iterable[Any], outbound: Iterable[Any]) -> Timeline:
    """The timeline of one call from its decoded ``InboundRecord``s and ``OutboundRecord``s
    (any order; records of other calls must already be filtered out)."""
    ins = sorted(inbound, key=lambda r: r.record_seq)
    outs = sorted(outbound, key=lambda r: r.sent_unix_us)
    started = next((r for r in ins if r.WhichOneof("body") == "started"), None)
    ended = next((r for r in ins if r.WhichOneof("body") == "ended"), None)
    chunks = sorted((r.audio for r in ins if r.WhichOneof("body") == "audio"),
                    key=lambda a: a.media_position_samples)
    sent = [r for r in outs if r.WhichOneof("body") == "audio"]
    rate = _rate(started, chunks, sent)
    if started is None and not chunks and not sent:
        raise NoCall("no started record, caller audio or bot clip for this call")
    call_id = (started or ended or (ins[0] if ins else outs[0])).call_id

    t0 = min((a.received_unix_us - a.media_position_samples * 1_000_000 // rate
              for a in chunks), default=None)
    candidates = [t for t in (started.time_unix_us if started else None, t0,
                              sent[0].sent_unix_us if sent else None) if t is not None]
    origin = min(candidates)

    def at(t_us: int) -> int:
        return max(0, round((t_us - origin) * rate / 1_000_000))

    caller_offset = at(t0) if t0 is not None else 0
    clips = _place_clips(sent, at, rate, origin)
    caller_end = caller_offset + max(
        [a.media_position_samples + len(a.pcm) // 2 for a in chunks]
        + [ended.ended.audio_samples if ended else 0])
    length = max([caller_end, at(ended.time_unix_us) if ended else 0]
                 + [c.end for c in clips])
    left = np.zeros(length, dtype=np.int16)
    for a in chunks:
        pcm = np.frombuffer(a.pcm, dtype="<i2", count=len(a.pcm) // 2)
        p = caller_offset + a.media_position_samples
        left[p:p + len(pcm)] = pcm
    right = np.zeros(length, dtype=np.int16)
    for c, r in zip(clips, sent, strict=True):
        right[c.start:c.end] = np.frombuffer(r.audio.pcm, dtype="<i2", count=c.end - c.start)

    def secs(t_us: int) -> float:
        return round(at(t_us) / rate, 4)

    gaps = _caller_gaps(ins, chunks, caller_offset, caller_end) + _bot_gaps(clips)
    caller_speech = _speech(left, rate)
    bot_speech = _speech(right, rate)
    return Timeline(
        call_id=call_id, rate=rate, origin_us=origin, caller_offset=caller_offset,
        left=left, right=right, clips=tuple(clips),
        events=tuple(sorted(_events(ins, outs, secs), key=lambda e: e.at_s)),
        gaps=tuple(sorted(gaps, key=lambda g: (g.start, g.side == "bot"))),
        caller_speech=caller_speech, bot_speech=bot_speech,
        turns=_turns(chunks, sent, rate, origin),
        start=_start_fields(started, call_id, rate, secs),
        end=_end_fields(ended, secs))


def _rate(started: Any, chunks: Sequence[Any], sent: Sequence[Any]) -> int:
    rates = ([started.started.sample_rate] if started else []) + [
        a.sample_rate for a in chunks] + [r.audio.sample_rate for r in sent]
    return next((r for r in rates if r > 0), 8000)


def _place_clips(sent: Sequence[Any], at: Any, rate: int, origin: int) -> list[Clip]:
    out: list[Clip] = []
    queue_end = 0
    expected: int | None = None  # the bot stream position the next clip should start at
    for r in sent:
        a = r.audio
        if expected is not None and a.media_position_samples > expected:
            queue_end += a.media_position_samples - expected  # lost clips played too
        start = max(at(r.sent_unix_us), queue_end)
        end = start + len(a.pcm) // 2
        out.append(Clip(start, end, round((r.sent_unix_us - origin) / 1e6, 4),
                        a.media_position_samples))
        queue_end = end
        expected = a.media_position_samples + len(a.pcm) // 2
    return out


def _caller_gaps(ins: Sequence[Any], chunks: Sequence[Any], offset: int,
                 caller_end: int) -> list[Gap]:
    withheld = [(w.first_media_position_samples, w.first_media_position_samples + w.samples)
                for w in (r.capture_withheld for r in ins
                          if r.WhichOneof("body") == "capture_withheld")]
    out: list[Gap] = []
    position = 0
    for a in [*chunks, None]:
        nxt = a.media_position_samples if a is not None else caller_end - offset
        if nxt > position:
            covered = any(lo <= position and nxt <= hi for lo, hi in withheld)
            out.append(Gap("caller", offset + position, offset + nxt,
                           "withheld" if covered else "lost"))
        if a is not None:
            position = max(position, a.media_position_samples + len(a.pcm) // 2)
    return out


def _bot_gaps(clips: Sequence[Clip]) -> list[Gap]:
    out: list[Gap] = []
    for before, clip in zip(clips, clips[1:], strict=False):
        expected = before.media_position_samples + (before.end - before.start)
        missing = clip.media_position_samples - expected
        if missing > 0:
            out.append(Gap("bot", before.end, before.end + missing, "lost"))
    return out


def _events(ins: Sequence[Any], outs: Sequence[Any], secs: Any) -> list[Event]:
    out: list[Event] = []
    for r in ins:
        body = r.WhichOneof("body")
        if body == "playback":
            kind = records.playback_kind(r)
            p = r.playback
            name = kind.value if kind else "playback"
            marked = kind in (m.PlaybackKind.MARK_REACHED, m.PlaybackKind.MARK_CLEARED)
            label = p.mark_name if marked else f"{p.samples} samples dropped" + (
                f" ({p.detail})" if p.detail else "")
            out.append(Event(secs(r.time_unix_us), name, label,
                             heard_ms=p.heard_ms if marked else None,
                             samples=None if marked else p.samples))
        elif body == "dropped":
            d = r.dropped
            out.append(Event(secs(r.time_unix_us), "dropped",
                             f"{d.records} records lost ({d.audio_chunks} audio) "
                             f"for {d.topic or 'inbound'}, seq {d.first_record_seq}"
                             f"-{d.last_record_seq}"))
        elif body == "ended":
            reason = records.end_reason(r)
            out.append(Event(secs(r.time_unix_us), "ended",
                             reason.value if reason else "unspecified"))
    for o in outs:
        body = o.WhichOneof("body")
        if body == "control":
            kind = _control_kind(o.control)
            out.append(Event(secs(o.sent_unix_us), kind, kind))
        elif body == "dropped":
            out.append(Event(secs(o.sent_unix_us), "dropped_outbound",
                             f"{o.dropped.records} bot records lost "
                             f"({o.dropped.audio_clips} clips)"))
    return out


def _control_kind(control: Any) -> str:
    """"hang_up", "transfer", "kill_audio": the enum's own name, read from the record."""
    enum = control.DESCRIPTOR.fields_by_name["kind"].enum_type
    value = enum.values_by_number.get(control.kind)
    return value.name.removeprefix("CONTROL_KIND_").lower() if value else "control"


def _speech(pcm: np.ndarray, rate: int) -> tuple[Segment, ...]:
    window = max(1, rate * WINDOW_MS // 1000)
    n = len(pcm) // window
    if n == 0:
        return ()
    frames = pcm[: n * window].astype(np.float64).reshape(n, window)
    active = np.mean(frames * frames, axis=1) >= float(THRESHOLD_RMS) ** 2
    segments: list[list[int]] = []
    bridge = HANGOVER_MS // WINDOW_MS
    for i in np.flatnonzero(active):
        if segments and i - segments[-1][1] <= bridge:
            segments[-1][1] = i + 1
        else:
            segments.append([int(i), int(i) + 1])
    step = WINDOW_MS / 1000
    return tuple(Segment(round(a * step, 3), round(b * step, 3)) for a, b in segments)


def _turns(chunks: Sequence[Any], sent: Sequence[Any], rate: int,
           origin: int) -> tuple[Turn, ...]:
    """The node's turn meter run again on what the bus holds, times from ``origin``."""
    meter = TurnMeter(rate)
    feed = sorted([((a.received_unix_us - origin) / 1e6, 0, a.pcm) for a in chunks]
                  + [((r.sent_unix_us - origin) / 1e6, 1, b"") for r in sent],
                  key=lambda f: f[:2])
    out = []
    speech_end = 0.0  # the meter's end of speech: the end of the last loud caller chunk
    for at, is_bot, pcm in feed:
        if is_bot:
            latency = meter.bot_audio(at)
        else:
            latency = meter.caller_audio(pcm, at)
            if len(pcm) >= 2 and mean_square(pcm) >= float(THRESHOLD_RMS) ** 2:
                speech_end = at + len(pcm) // 2 / rate
        if latency is not None:
            out.append(Turn(round(speech_end, 4), round(speech_end + latency, 4),
                            round(latency * 1000, 1)))
    return tuple(out)


def _start_fields(started: Any, call_id: str, rate: int, secs: Any) -> dict[str, Any]:
    if started is None:
        return {"call_id": call_id, "sample_rate": rate, "seen": False}
    s = started.started
    try:
        provider = json.loads(s.provider_fields_json or "{}")
    except ValueError:
        provider = s.provider_fields_json
    return {"seen": True, "time_unix_us": started.time_unix_us, "at_s": secs(started.time_unix_us),
            "node_id": started.node_id, "caller": s.caller, "callee": s.callee,
            "direction": records.direction(started).value, "sample_rate": rate,
            "campaign": s.provider_campaign, "request_path": s.request_path,
            "start_message_shape": s.start_message_shape, "reply_topic": s.reply_topic,
            "provider_fields": provider}


def _end_fields(ended: Any, secs: Any) -> dict[str, Any] | None:
    if ended is None:
        return None
    e = ended.ended
    reason = records.end_reason(ended)
    return {"reason": reason.value if reason else "unspecified", "detail": e.detail,
            "close_code": e.close_code, "at_s": secs(ended.time_unix_us),
            "node_id": ended.node_id, "duration_ms": e.duration_ms,
            "node_turns": e.turns, "node_turn_latency_ms": list(e.turn_latency_ms),
            "audio_chunks": e.audio_chunks, "audio_samples": e.audio_samples}
