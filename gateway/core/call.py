"""The per-call state machine: one provider socket, from open to call end.

Sans-I/O in the manner of h11: the adapter feeds frames, commands, timer
firings and the socket's close in; every method returns the effects to carry
out, in order. All state rules are in this file.

    AWAITING_START --start message--> ACTIVE --hang-up/transfer sent--> ENDING
          |                              |                                |
          +---- timeout / bad input -----+-- close / error / shutdown ----+--> ENDED

Guarantee: once CallStarted is published, exactly one CallEnded follows,
whatever way the call ends; every capture pause is followed by exactly one
CaptureWithheld (at the resume, or before the CallEnded). A socket that
never sends a valid start message gets no records at all (there is no call
to speak of), only a close and a log.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gateway.core import capture, commands
from gateway.core import knowlarity as codec
from gateway.core import model as m
from gateway.core.capture import CapturePause
from gateway.core.commands import CommandLimits
from gateway.core.errors import CloseCode, ProtocolError, UsageError
from gateway.core.playout import (
    BYTES_PER_SAMPLE,
    AudioBudget,
    Playout,
    PlayoutSettings,
    ReleasedAudio,
    ReleasedMarker,
)
from gateway.core.rate import TokenBucket
from gateway.core.turns import TurnMeter


class State(enum.Enum):
    AWAITING_START = "awaiting_start"
    ACTIVE = "active"
    ENDING = "ending"
    ENDED = "ended"


# Timer names the adapter arms and feeds back through ``on_timer``.
START_TIMER = "start"
IDLE_TIMER = "idle"
ENDING_TIMER = "ending"
PLAYOUT_TIMER = "playout"
AGGREGATE_TIMER = "aggregate"


@dataclass(frozen=True)
class CallSettings:
    start_timeout_s: float = 10.0
    # After hang-up/transfer, how long the provider has to close the socket.
    ending_timeout_s: float = 10.0
    # No frame at all from the provider for this long ends the call (0: off).
    idle_timeout_s: float = 60.0
    default_sample_rate: int = 16000
    content_type: codec.AudioContentType = codec.AudioContentType.WAVE
    # Send the undocumented killAudio on clear (best effort, see PROTOCOL.md); never
    # while uninterruptible audio is queued or playing (see ``Call._clear``).
    kill_audio_on_clear: bool = False
    # Caller audio faster than this multiple of real time (after a grace
    # allowance) is a flood, not a phone call.
    max_audio_speed: float = 3.0
    audio_burst_allowance_s: float = 10.0
    # Binary frames of any size (zero-length ones too): a sustained rate above
    # this, beyond the burst, is a flood. Each frame costs a record.
    max_frames_per_s: float = 250.0
    frame_burst: int = 1000
    # Text frames after the start message: a sustained rate above this is a flood.
    max_text_frames_per_s: float = 20.0
    text_burst: int = 100
    # Caller audio per inbound record, in ms; 0 publishes each frame as it comes.
    aggregate_ms: int = 0
    playout: PlayoutSettings = field(default_factory=PlayoutSettings)
    commands: CommandLimits = field(default_factory=CommandLimits)


class Call:
    """One call. Create it when the socket opens; feed it until ``ended``."""

    def __init__(
        self,
        settings: CallSettings,
        *,
        provisional_id: str,
        reply_topic: str,
        request_path: str,
        budget: AudioBudget | None = None,
    ) -> None:
        self._s = settings
        # The node's budget for bot audio, shared by its calls; a call alone has its own.
        self._budget = budget or AudioBudget(settings.playout.max_call_bytes)
        self._reply_topic = reply_topic
        self._request_path = request_path
        self.call_id = provisional_id
        self.state = State.AWAITING_START
        self.sample_rate = 0
        self.end_reason: m.EndReason | None = None
        self._record_seq = 0
        self._audio_seq = 0
        self._media_samples = 0  # caller audio received
        # When the caller's sample 0 fell on our clock, pinned by the least delayed
        # frame; None before the first. Plays timed ``at_caller_ms`` count from it.
        self._media_origin: float | None = None
        # Media position of the next CallerAudio: samples published and withheld (the
        # rest of what was received is held for aggregation).
        self._position = 0
        self._pause: CapturePause | None = None
        self._held: list[bytes] = []
        self._held_samples = 0
        self._held_since = 0.0
        self._aggregate_samples = 0
        self._aligner = codec.PcmAligner()
        self._playout: Playout | None = None
        self._turns: TurnMeter | None = None
        self._opened_at = 0.0
        self._started_at = 0.0
        self._last_frame_at = 0.0
        self._text_bucket = TokenBucket(settings.max_text_frames_per_s, settings.text_burst)
        self._frame_bucket = TokenBucket(settings.max_frames_per_s, settings.frame_burst)
        # What ENDING waits for: the reason to report once the provider closes.
        self._pending_reason: m.EndReason | None = None

    # --- inputs from the socket ------------------------------------------------

    def opened(self, now: float) -> list[m.Effect]:
        self._opened_at = self._last_frame_at = now
        return [m.SetTimer(START_TIMER, self._s.start_timeout_s)]

    def on_text(self, text: str, now: float) -> list[m.Effect]:
        self._last_frame_at = now
        try:
            if self.state is State.AWAITING_START:
                return self._start(text, now)
            if self.state in (State.ACTIVE, State.ENDING):
                self._take_text_token(now)
                return [self._record(now, m.ProviderEvent(text=text, received_at=now))]
            return []
        except ProtocolError as e:
            return self._fail(e, now)

    def on_binary(self, data: bytes, now: float) -> list[m.Effect]:
        self._last_frame_at = now
        if self.state in (State.ACTIVE, State.ENDING):
            if not self._frame_bucket.take(now):
                return self._fail(ProtocolError(
                    f"binary frame flood (over {self._s.max_frames_per_s:g} frames/s beyond a "
                    f"burst of {self._s.frame_burst})", CloseCode.POLICY_VIOLATION), now)
            pcm = self._aligner.push(data)
            if not pcm:
                # A zero-length frame marks the end of the caller's stream; the
                # close follows. Publish what is held back.
                return self._flush_audio(now)
            effects: list[m.Effect]
            if self._pause is not None:
                self._pause.withhold(len(pcm) // BYTES_PER_SAMPLE, now)
                self._position += len(pcm) // BYTES_PER_SAMPLE
                effects = []
            elif self._aggregate_samples:
                effects = self._hold_audio(pcm, now)
            else:
                effects = [self._audio_record(pcm, now, now)]
            origin = now - self._media_samples / self.sample_rate
            if self._media_origin is None or origin < self._media_origin:
                self._media_origin = origin
            self._media_samples += len(pcm) // BYTES_PER_SAMPLE
            if self._turns is not None:
                latency = self._turns.caller_audio(pcm, now)
                if latency is not None:
                    effects.append(m.TurnMeasured(latency))
            if self._is_audio_flood(now):
                effects += self._fail(
                    ProtocolError("caller audio faster than real time", CloseCode.POLICY_VIOLATION),
                    now,
                )
            return effects
        if self.state is State.AWAITING_START:
            return self._fail(
                ProtocolError("audio before the start message", CloseCode.UNSUPPORTED_DATA), now
            )
        return []

    def _audio_record(self, pcm: bytes, received_at: float, now: float) -> m.Publish:
        chunk = m.CallerAudio(
            seq=self._audio_seq,
            media_position_samples=self._position,
            received_at=received_at,
            pcm=pcm,
            sample_rate=self.sample_rate,
        )
        self._audio_seq += 1
        self._position += len(pcm) // BYTES_PER_SAMPLE
        return self._record(now, chunk)

    def _hold_audio(self, pcm: bytes, now: float) -> list[m.Effect]:
        """Aggregation: one record per ``aggregate_ms`` of caller audio, fewer records to pay
        for. The record's receive time is its first frame's, so latency figures include
        the wait."""
        effects: list[m.Effect] = []
        if not self._held:
            self._held_since = now
            # Flushed by the timer if the caller's stream pauses.
            effects.append(m.SetTimer(AGGREGATE_TIMER, self._s.aggregate_ms / 1000 * 1.5))
        self._held.append(pcm)
        self._held_samples += len(pcm) // BYTES_PER_SAMPLE
        if self._held_samples >= self._aggregate_samples:
            effects += self._flush_audio(now)
        return effects

    def _flush_audio(self, now: float) -> list[m.Effect]:
        if not self._held:
            return []
        pcm = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        self._held_samples = 0
        return [m.CancelTimer(AGGREGATE_TIMER), self._audio_record(pcm, self._held_since, now)]

    def on_socket_closed(self, code: int | None, clean: bool, now: float) -> list[m.Effect]:
        """The socket is gone (whoever closed it). Ends the call if still open."""
        if self.state is State.ENDED:
            return []
        if self.state is State.AWAITING_START:
            self.state = State.ENDED
            return self._cancel_all()
        if self.state is State.ENDING and self._pending_reason is not None:
            reason = self._pending_reason
            detail = "provider closed after the gateway's request"
        elif clean:
            reason, detail = m.EndReason.CALLER_HANGUP, "provider closed the socket"
        else:
            reason, detail = m.EndReason.CONNECTION_LOST, "socket dropped without a close handshake"
        return self._end(reason, detail, code or 0, now, close=None)

    # --- inputs from the node ----------------------------------------------------

    def on_timer(self, name: str, now: float) -> list[m.Effect]:
        if self.state is State.ENDED:
            return []
        if name == START_TIMER and self.state is State.AWAITING_START:
            self.state = State.ENDED
            return self._cancel_all() + [
                m.CloseSocket(CloseCode.START_TIMEOUT, "no start message in time")
            ]
        if name == IDLE_TIMER and self.state is not State.AWAITING_START:
            idle_for = now - self._last_frame_at
            if idle_for < self._s.idle_timeout_s:
                return [m.SetTimer(IDLE_TIMER, self._s.idle_timeout_s - idle_for)]
            return self._end(
                m.EndReason.IDLE_TIMEOUT,
                f"no frame from the provider for {idle_for:.1f}s",
                CloseCode.IDLE_TIMEOUT,
                now,
                close="idle timeout",
            )
        if name == ENDING_TIMER and self.state is State.ENDING:
            what = "hang-up" if self._pending_reason is m.EndReason.BOT_HANGUP else "transfer"
            return self._end(
                m.EndReason.ENDING_TIMEOUT,
                f"{what} sent; provider did not close within {self._s.ending_timeout_s:g}s",
                CloseCode.ENDING_TIMEOUT,
                now,
                close=f"{what} not acted on",
            )
        if name == PLAYOUT_TIMER:
            return self._pump(now)
        if name == AGGREGATE_TIMER:
            return self._flush_audio(now)
        return []

    def on_command(self, cmd: m.Command, now: float) -> list[m.Effect]:
        body = cmd.body
        if self.state is not State.ACTIVE or self._playout is None:
            if isinstance(body, m.PlayAudio) and self.state is State.ENDING:
                return [self._dropped(now, len(body.pcm) // BYTES_PER_SAMPLE, "call is ending")]
            return []
        if isinstance(body, m.Refused):
            return [self._rejected(cmd, body.reason, now)]
        # Checked when decoded; again here, so the core holds its bounds for any caller.
        why = commands.check(body, self._s.commands)
        if why:
            return [self._rejected(cmd, why, now)]
        if isinstance(body, m.PauseCapture | m.ResumeCapture):
            return self._pause_or_resume(cmd, body, now)
        playout = self._playout
        if isinstance(body, m.PlayAudio):
            not_before, why = self._timed(body)
            if why:
                return [self._rejected(cmd, why, now)]
            why = playout.enqueue_audio(body.pcm, body.sample_rate, body.uninterruptible,
                                        not_before)
            if why:
                return [self._rejected(cmd, f"{why}: {len(body.pcm)} bytes at "
                                            f"{body.sample_rate} Hz refused", now)]
            effects: list[m.Effect] = []
        elif isinstance(body, m.ClearAudio):
            effects = self._clear(playout, now)
            if self.state is not State.ACTIVE:
                return effects
        elif isinstance(body, m.Transfer | m.Mark | m.HangUp):
            why = playout.enqueue_marker(body)
            if why:
                return [self._rejected(cmd, why, now)]
            effects = []
        else:  # pragma: no cover - the union is exhaustive
            raise UsageError(f"unknown command {body!r}")
        return effects + self._pump(now)

    def _timed(self, body: m.PlayAudio) -> tuple[float, str | None]:
        """When a play timed ``at_caller_ms`` may be sent, or why it is refused."""
        if not body.at_caller_ms:
            return 0.0, None
        heard_ms = self._media_samples * 1000 // self.sample_rate
        ahead = body.at_caller_ms - heard_ms
        limit = self._s.commands.max_play_ahead_ms
        if ahead > limit:
            return 0.0, (f"play timed at caller ms {body.at_caller_ms} is {ahead} ms beyond the "
                         f"caller's stream (at most {limit})")
        origin = self._started_at if self._media_origin is None else self._media_origin
        return origin + body.at_caller_ms / 1000, None

    def _rejected(self, cmd: m.Command, reason: str, now: float) -> m.Publish:
        return self._record(now, m.CommandRejected(cmd.command_id, reason))

    def _clear(self, playout: Playout, now: float) -> list[m.Effect]:
        """Drop queued interruptible audio; the markers it cleared with nothing kept ahead
        are due at once (a hang-up still happens), the rest wait their turn.

        killAudio (if on) is not sent while uninterruptible audio is queued or sent and
        not yet played by the playout clock: it would cut what is playing, and since how
        fast a provider acts on it is unknown (PROTOCOL.md), perhaps the kept audio sent
        right after it."""
        cleared = playout.clear(now)
        kill = self._s.kill_audio_on_clear
        protected = kill and playout.holds_uninterruptible(now)
        detail = "killAudio not sent: uninterruptible audio is queued or playing" \
            if protected else ""
        effects: list[m.Effect] = [self._record(now, m.PlaybackEvent(
            m.PlaybackKind.CLEARED, samples=cleared.dropped_samples, detail=detail))]
        if kill and not protected:
            frame = codec.encode_kill_audio()
            effects += [m.SendText(frame),
                        self._outbound(now, m.ControlSent(m.ControlKind.KILL_AUDIO, frame))]
        for released in cleared.released:
            effects += self._release_marker(released, now)
            if self.state is not State.ACTIVE:
                break
        return effects

    def _pause_or_resume(self, cmd: m.Command, body: m.PauseCapture | m.ResumeCapture,
                         now: float) -> list[m.Effect]:
        """Caller audio held for aggregation was captured before the pause: published first."""
        if isinstance(body, m.PauseCapture):
            if self._pause is not None:
                return [self._rejected(cmd, capture.ALREADY_PAUSED, now)]
            effects = self._flush_audio(now)
            self._pause = CapturePause(self._position, now)
            return effects
        if self._pause is None:
            return [self._rejected(cmd, capture.NOT_PAUSED, now)]
        return self._end_pause(now)

    def _end_pause(self, now: float) -> list[m.Effect]:
        if self._pause is None:
            return []
        pause, self._pause = self._pause, None
        return [self._record(now, pause.withheld())]

    def end(self, reason: m.EndReason, detail: str, close_code: int,
            now: float) -> list[m.Effect]:
        """End the call from the node's side (shutdown, replaced by another socket)."""
        if self.state is State.ENDED:
            return []
        if self.state is State.AWAITING_START:
            self.state = State.ENDED
            return self._cancel_all() + [m.CloseSocket(close_code, detail)]
        return self._end(reason, detail, close_code, now, close=detail)

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    # --- internals -------------------------------------------------------------

    def _start(self, text: str, now: float) -> list[m.Effect]:
        start = codec.parse_start(
            text, fallback_call_id=self.call_id, default_sample_rate=self._s.default_sample_rate
        )
        self.call_id = start.call_id
        self.sample_rate = start.sample_rate
        self.state = State.ACTIVE
        self._started_at = now
        self._text_bucket.restart(now)
        self._frame_bucket.restart(now)
        self._playout = Playout(self._s.playout, start.sample_rate, self._budget)
        self._turns = TurnMeter(start.sample_rate)
        self._aggregate_samples = self._s.aggregate_ms * start.sample_rate // 1000
        effects: list[m.Effect] = [
            m.CancelTimer(START_TIMER),
            m.CallIdentified(self.call_id),
            self._record(now, m.CallStarted(start, self._reply_topic, self._request_path)),
        ]
        if self._s.idle_timeout_s > 0:
            effects.append(m.SetTimer(IDLE_TIMER, self._s.idle_timeout_s))
        return effects

    def _record(self, now: float, body: m.InboundBody) -> m.Publish:
        rec = m.Inbound(call_id=self.call_id, record_seq=self._record_seq, at=now, body=body)
        self._record_seq += 1
        return m.Publish(rec)

    def _outbound(self, now: float, body: m.AudioSent | m.ControlSent) -> m.PublishOutbound:
        return m.PublishOutbound(m.Outbound(call_id=self.call_id, at=now, body=body))

    def _dropped(self, now: float, samples: int, detail: str) -> m.Publish:
        return self._record(
            now, m.PlaybackEvent(m.PlaybackKind.AUDIO_DROPPED, samples=samples, detail=detail)
        )

    def _pump(self, now: float) -> list[m.Effect]:
        if self._playout is None or self.state is not State.ACTIVE:
            return []
        released, wake = self._playout.pump(now)
        effects: list[m.Effect] = []
        for i, item in enumerate(released):
            if isinstance(item, ReleasedAudio):
                effects.append(m.SendText(codec.encode_play_audio(
                    item.pcm, self.sample_rate, self._s.content_type)))
                effects.append(self._outbound(now, m.AudioSent(
                    item.pcm, self.sample_rate, item.media_position_samples)))
                latency = self._turns.bot_audio(now) if self._turns is not None else None
                if latency is not None:
                    effects.append(m.TurnMeasured(latency))
            else:
                effects += self._release_marker(item, now)
                if self.state is not State.ACTIVE:
                    # Audio released behind the hang-up or transfer is never sent.
                    unsent = sum(len(r.pcm) for r in released[i + 1:]
                                 if isinstance(r, ReleasedAudio)) // BYTES_PER_SAMPLE
                    if unsent:
                        effects.append(self._dropped(now, unsent, "call is ending"))
                    return effects
        if wake is not None:
            effects.append(m.SetTimer(PLAYOUT_TIMER, max(0.0, wake)))
        return effects

    def _release_marker(self, released: ReleasedMarker, now: float) -> list[m.Effect]:
        marker = released.marker
        if isinstance(marker, m.Mark):
            event = m.PlaybackKind.MARK_CLEARED if released.cleared else m.PlaybackKind.MARK_REACHED
            heard_ms = released.heard_samples * 1000 // self.sample_rate
            return [self._record(now, m.PlaybackEvent(event, mark_name=marker.name,
                                                      heard_ms=heard_ms))]
        if isinstance(marker, m.HangUp):
            frame, kind, reason = codec.encode_hang_up(), m.ControlKind.HANG_UP, \
                m.EndReason.BOT_HANGUP
        else:
            frame, kind, reason = codec.encode_transfer(marker.parameters), \
                m.ControlKind.TRANSFER, m.EndReason.TRANSFERRED
        self.state = State.ENDING
        self._pending_reason = reason
        effects: list[m.Effect] = [
            m.SendText(frame),
            self._outbound(now, m.ControlSent(kind, frame)),
            m.CancelTimer(PLAYOUT_TIMER),
            m.SetTimer(ENDING_TIMER, self._s.ending_timeout_s),
        ]
        effects += self._drop_queue(now, "call is ending")
        return effects

    def _drop_queue(self, now: float, why: str) -> list[m.Effect]:
        if self._playout is None:
            return []
        dropped = self._playout.discard()
        return [self._dropped(now, dropped, why)] if dropped else []

    def _end(self, reason: m.EndReason, detail: str, close_code: int, now: float,
             close: str | None) -> list[m.Effect]:
        """Publish the one CallEnded; ``close`` is the reason to close the socket with, if open."""
        effects = (self._flush_audio(now) + self._end_pause(now)
                   + self._drop_queue(now, "call ended"))
        self.state = State.ENDED
        self.end_reason = reason
        turns = self._turns.summary() if self._turns is not None else None
        effects.append(self._record(now, m.CallEnded(
            reason=reason,
            detail=detail,
            close_code=close_code,
            audio_chunks=self._audio_seq,
            audio_samples=self._media_samples,
            # max: a wall clock stepped back must not give a negative (unsendable) duration.
            duration_ms=max(0, int((now - self._started_at) * 1000)),
            turns=turns.turns if turns else 0,
            turn_latency_ms=turns.latencies_ms if turns else (),
        )))
        effects += self._cancel_all()
        if close is not None:
            effects.append(m.CloseSocket(close_code, close))
        return effects

    def _fail(self, err: ProtocolError, now: float) -> list[m.Effect]:
        if self.state is State.AWAITING_START:
            self.state = State.ENDED
            return self._cancel_all() + [m.CloseSocket(err.close_code, err.reason)]
        return self._end(m.EndReason.PROTOCOL_ERROR, err.reason, err.close_code, now,
                         close=err.reason)

    def _cancel_all(self) -> list[m.Effect]:
        timers = (START_TIMER, IDLE_TIMER, ENDING_TIMER, PLAYOUT_TIMER, AGGREGATE_TIMER)
        return [m.CancelTimer(t) for t in timers]

    def _take_text_token(self, now: float) -> None:
        if not self._text_bucket.take(now):
            raise ProtocolError("text frame flood", CloseCode.POLICY_VIOLATION)

    def _is_audio_flood(self, now: float) -> bool:
        s = self._s
        media_s = self._media_samples / self.sample_rate
        return media_s > (now - self._started_at) * s.max_audio_speed + s.audio_burst_allowance_s
