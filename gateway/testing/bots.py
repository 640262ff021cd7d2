"""Bots on the SDK tested without a broker: a scripted caller, a model of the node's playout.

    async def test_greets() -> None:
        async with ScriptedCall(my_handler, realtime=False) as sc:
            await sc.silence(2.0)
            await sc.wait_for(m.HangUp)
        assert sc.hung_up

``ScriptedCall`` runs ``handler`` on a real ``gateway.sdk.Call`` whose commands
are recorded instead of produced. Caller audio goes in with ``say`` and
``silence``, in chunks of ``frame_ms`` as the node publishes them. Time is the
call's own: with ``realtime`` the feed is paced to the wall clock, without it
time passes only as audio is fed (as fast as the handler takes it), so a test
of a 30 s call runs in milliseconds and never depends on the machine's speed.
In a real call the provider streams audio all along: feed ``silence`` to let
time pass while the bot talks.

The node's part is a model, ``PlayoutModel``, kept simple (the node's real
rules are in ``gateway.core.playout`` and the PlaybackEvent comments in
``proto/knowlarity/gateway/v1/inbound.proto``): bot audio plays back to back
at real time, a clear cuts the playing clip at once (the node lets the audio
already sent play out), and a mark cleared is reported at once. pytest runs
with ``--reactor=asyncio``, whose loop owns the test's thread: run a test's
coroutine with ``run_async``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gateway import sdk, topics
from gateway.core import model as m
from gateway.core import wav
from gateway.core.resample import converted_bytes

T = TypeVar("T")

# Loop turns a fed chunk waits for the handler to take it (a handler busy elsewhere,
# awaiting a mark say, may not), then turns for it to act on what it took.
_TAKE_TURNS = 20
_ACT_TURNS = 3


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` to its end on a fresh event loop in a worker thread (the test's thread
    runs the reactor's loop), cancelling it after ``timeout`` seconds."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(coro, timeout)).result()


# --- the node's playout, modelled ---------------------------------------------------


@dataclass
class _Clip:
    pcm: bytes
    rate: int
    interruptible: bool
    start: float  # call time it begins playing
    kept: int  # samples (at ``rate``) that will play: all, or what had played when cleared
    call_samples: int  # its length at the call's rate, as the node converts it

    @property
    def end(self) -> float:
        return self.start + self.kept / self.rate

    @property
    def samples(self) -> int:
        return max(1, len(self.pcm) // 2)

    def played(self, now: float) -> int:
        if now >= self.end:
            return self.kept
        return max(0, min(self.kept, int((now - self.start) * self.rate)))


@dataclass
class _Marker:
    body: m.Mark | m.HangUp | m.Transfer
    segment: list[_Clip]  # the audio queued between the previous mark (or clear) and it


class PlayoutModel:
    """One call's bot audio and markers against call time (pure: ``now`` comes in).

    Simpler than the node on purpose: commands act the instant they are sent (no
    bus), nothing is sent ahead of the ear (so a clear cuts at once), no bound
    refuses audio (no AudioDropped), and a cleared mark is reported at the clear.

    A mark's segment is the audio queued since the previous mark or clear. A mark
    is REACHED once its segment has played, ``heard_ms`` the whole segment. A clear
    drops what of the interruptible audio has not played (uninterruptible audio
    plays on) and reports ``PlaybackCleared`` with the samples dropped at the call's
    rate, then every mark whose segment lost audio (or is empty, behind a mark
    cleared by the same clear) as CLEARED with the ms of its segment played. A
    hang-up or transfer ends the call once the audio before it has played.
    """

    def __init__(self, call_rate: int) -> None:
        self._rate = call_rate
        self._queue: deque[_Clip | _Marker] = deque()
        self._segment: list[_Clip] = []
        self._play_end = 0.0
        self.played: list[tuple[bytes, int]] = []

    def play(self, pcm: bytes, rate: int, interruptible: bool, now: float) -> None:
        n = len(pcm) // 2
        clip = _Clip(pcm[: n * 2], rate, interruptible, max(now, self._play_end), n,
                     converted_bytes(n * 2, rate, self._rate) // 2)
        self._play_end = clip.end
        self._queue.append(clip)
        self._segment.append(clip)

    def marker(self, body: m.Mark | m.HangUp | m.Transfer) -> None:
        self._queue.append(_Marker(body, self._segment))
        self._segment = []

    def advance(self, now: float) -> list[sdk.Event | m.HangUp | m.Transfer]:
        """What happened by ``now``: marks reached, and a hang-up or transfer carried out."""
        out: list[sdk.Event | m.HangUp | m.Transfer] = []
        while self._queue:
            head = self._queue[0]
            if isinstance(head, _Clip):
                if head.end > now:
                    break
                self._queue.popleft()
                if head.kept:
                    self.played.append((head.pcm[: head.kept * 2], head.rate))
            else:
                self._queue.popleft()
                if isinstance(head.body, m.Mark):
                    out.append(sdk.MarkResult(head.body.name, sdk.MarkOutcome.REACHED,
                                              self._heard_ms(head.segment, now)))
                else:
                    out.append(head.body)
                    self._queue.clear()  # the call is over
        return out

    def clear(self, now: float) -> list[sdk.Event]:
        dropped = 0
        cut: set[int] = set()
        for item in self._queue:
            if isinstance(item, _Clip) and item.interruptible and item.end > now:
                played = item.played(now)
                dropped += item.call_samples * (item.kept - played) // item.samples
                item.kept = played
                cut.add(id(item))
        out: list[sdk.Event] = [sdk.PlaybackCleared(dropped)]
        kept: deque[_Clip | _Marker] = deque()
        t = now
        previous_cleared = False
        for item in self._queue:
            if isinstance(item, _Marker) and isinstance(item.body, m.Mark):
                lost = any(id(c) in cut for c in item.segment)
                if lost or (not item.segment and previous_cleared):
                    out.append(sdk.MarkResult(item.body.name, sdk.MarkOutcome.CLEARED,
                                              self._heard_ms(item.segment, now)))
                    previous_cleared = True
                    continue
                previous_cleared = False
            elif isinstance(item, _Clip):
                if item.start > now:  # not begun: plays after what is kept before it
                    item.start = t
                t = max(t, item.end)
            kept.append(item)
        self._queue = kept
        self._segment = []
        self._play_end = t
        return out

    def _heard_ms(self, segment: list[_Clip], now: float) -> int:
        samples = sum(c.call_samples * c.played(now) // c.samples for c in segment)
        return samples * 1000 // self._rate


# --- the scripted call ------------------------------------------------------------------


CommandMatch = type | Callable[[m.Command], bool]


class ScriptedCall:
    """Run ``handler`` on one call in memory: ``async with ScriptedCall(handler) as sc``.

    On leaving the block the call ends as ``caller_hangup`` if it has not ended, and
    the handler is given ``end_timeout_s`` to return; an exception it raised is
    raised there (and by ``wait_for`` as soon as it happens). ``joined_late`` and
    ``start_known`` only set the ``CallInfo`` flags: records go straight to the
    ``Call``, not through ``gateway.sdk.calls`` (whose late-join rules tests/test_sdk.py
    covers). Pause and resume capture are modelled: chunks are withheld, then one
    ``CaptureWithheld`` is delivered.
    """

    def __init__(self, handler: sdk.Handler, *, sample_rate: int = 16000, frame_ms: int = 20,
                 call_id: str = "scripted-call", caller: str = "+919800000001",
                 callee: str = "+918000000002", direction: str = "inbound",
                 campaign: str = "", provider_fields: Mapping[str, Any] | None = None,
                 joined_late: bool = False, start_known: bool = True,
                 realtime: bool = True, end_timeout_s: float = 5.0) -> None:
        self.info = sdk.CallInfo(
            call_id=call_id, reply_topic=topics.commands_topic("knowlarity", "scripted-node"),
            sample_rate=sample_rate, node_id="scripted-node", caller=caller, callee=callee,
            direction=direction, campaign=campaign, provider_fields=dict(provider_fields or {}),
            started_at=time.time(), joined_late=joined_late, start_known=start_known)
        self._handler = handler
        self._frame = max(1, sample_rate * frame_ms // 1000)
        self._realtime = realtime
        self._end_timeout = end_timeout_s
        self.commands: list[m.Command] = []
        self.events: list[sdk.Event] = []  # what the model delivered, in order
        self.end: sdk.CallEnd | None = None
        self.transferred: dict[str, str] | None = None
        self._playout = PlayoutModel(sample_rate)
        self._t = 0.0  # call time, without realtime
        self._media_t = 0.0  # call time the caller's stream has reached
        self._position = 0
        self._seq = 0
        self._paused: list[sdk.Audio] | None = None  # chunks withheld while capture is paused
        self._withheld_at = 0
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._frozen: float | None = None  # the call time the block was left at

    @property
    def hung_up(self) -> bool:
        """The bot's hang-up was carried out (after the audio before it played)."""
        return self.end is not None and self.end.reason == "bot_hangup"

    @property
    def now(self) -> float:
        """Seconds of call time since the start."""
        if self._realtime and self._frozen is None:
            return asyncio.get_running_loop().time() - self._t0
        return self._t if self._frozen is None else self._frozen

    def played_pcm(self) -> list[tuple[bytes, int]]:
        """Bot audio the caller heard, in play order: ``(pcm, rate)`` as each play sent it,
        cut where a clear stopped it."""
        return list(self._playout.played)

    # --- the block ----------------------------------------------------------------

    async def __aenter__(self) -> ScriptedCall:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._new_command = asyncio.Event()
        self.call = sdk.Call(self.info, self._send)
        self._task = loop.create_task(self._run(), name=f"call-{self.info.call_id}")
        # As the SDK does: what a finished handler leaves unread is handed over.
        self._task.add_done_callback(lambda _: self.call.abandon())
        if self._realtime:
            self._ticker = loop.create_task(self._tick())
        await asyncio.sleep(0)  # the handler's first step: its opening commands
        return self

    async def _run(self) -> None:
        await self._handler(self.call)

    async def __aexit__(self, kind: object, error: object, tb: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        self._finish(sdk.CallEnd("caller_hangup"))
        self._frozen = self.now
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._end_timeout)
        except TimeoutError:
            self._task.cancel()
            if error is None:
                raise TimeoutError(f"the handler did not return within {self._end_timeout} s "
                                   f"of the call's end") from None
        except Exception:
            if error is None:
                raise
        finally:
            self.call.abandon()

    # --- the caller --------------------------------------------------------------------

    async def say(self, audio: bytes | np.ndarray | str | Path) -> None:
        """Caller audio at the call's rate: PCM bytes, an int16 array, or a WAV file."""
        if isinstance(audio, str | Path):
            pcm, rate = wav.decode_wav(Path(audio).read_bytes())
            if rate != self.info.sample_rate:
                raise ValueError(f"{audio}: {rate} Hz, the call is at {self.info.sample_rate} Hz")
        elif isinstance(audio, np.ndarray):
            pcm = audio.astype("<i2").tobytes()
        else:
            pcm = bytes(audio)
        await self._feed(pcm)

    async def silence(self, seconds: float) -> None:
        """Digital silence for ``seconds``, or until the call ends."""
        await self._feed(bytes(round(seconds * self.info.sample_rate) * 2))

    async def hang_up(self) -> None:
        """The caller hangs up: the call ends as ``caller_hangup``."""
        self._advance()
        self._finish(sdk.CallEnd("caller_hangup"))
        await self._settle(lambda: True)

    async def wait_for(self, match: CommandMatch, timeout: float = 5.0) -> m.Command:
        """The first command sent whose body is of type ``match`` (or that ``match(command)``
        accepts), waiting up to ``timeout`` wall seconds for it. Waiting lets no call time
        pass without ``realtime``."""
        test = ((lambda c: isinstance(c.body, match)) if isinstance(match, type) else match)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            self._raise_handler_error()
            found = next((c for c in self.commands if test(c)), None)
            if found is not None:
                return found
            self._new_command.clear()
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._new_command.wait(), max(0.0, left))
            except TimeoutError:
                sent = [type(c.body).__name__ for c in self.commands]
                raise TimeoutError(f"no matching command within {timeout} s; sent: {sent}"
                                   ) from None

    # --- inside ---------------------------------------------------------------------------

    async def _feed(self, pcm: bytes) -> None:
        step = self._frame * 2
        pcm = pcm[: len(pcm) // 2 * 2]
        if self._realtime:
            self._media_t = max(self._media_t, self.now)
        for at in range(0, len(pcm), step):
            if self.call.ended.done():
                return
            frame = pcm[at:at + step]
            n = len(frame) // 2
            if self._realtime:
                self._media_t += n / self.info.sample_rate
                await asyncio.sleep(max(0.0, self._media_t - self.now))
            else:  # exact: the call's time is the caller's stream position
                self._t = self._media_t = (self._position + n) / self.info.sample_rate
            self._advance()
            if self.call.ended.done():
                return
            chunk = sdk.Audio(frame, self._seq, self._position, self.info.sample_rate,
                              self.info.started_at + self._media_t)
            self._position += n
            if self._paused is not None:
                self._paused.append(chunk)
                continue
            self._seq += 1
            await self._hand(chunk)

    async def _hand(self, chunk: sdk.Audio) -> None:
        taken: list[bool] = []
        self.call.deliver_audio(chunk, lambda: taken.append(True))
        await self._settle(lambda: bool(taken))

    async def _settle(self, taken: Callable[[], bool]) -> None:
        for _ in range(_TAKE_TURNS):
            await asyncio.sleep(0)
            if taken():
                break
        for _ in range(_ACT_TURNS):
            await asyncio.sleep(0)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._frame / self.info.sample_rate)
            self._advance()

    def _advance(self) -> None:
        if self.call.ended.done():
            return
        for happened in self._playout.advance(self.now):
            if isinstance(happened, m.HangUp):
                self._finish(sdk.CallEnd("bot_hangup"))
            elif isinstance(happened, m.Transfer):
                self.transferred = dict(happened.parameters)
                self._finish(sdk.CallEnd("transferred"))
            else:
                self._deliver(happened)

    def _deliver(self, event: sdk.Event) -> None:
        self.events.append(event)
        self.call.deliver_event(event, lambda: None)

    def _finish(self, end: sdk.CallEnd) -> None:
        if self.call.ended.done():
            return
        self._resume()
        self.end = end
        self.call.deliver_end(end)

    def _resume(self) -> None:
        """Capture resumes (or the call ends while paused): one CaptureWithheld, as the node."""
        withheld, self._paused = self._paused, None
        if withheld is None:
            return
        first, last = (withheld[0].received_at, withheld[-1].received_at) if withheld else (0, 0)
        self._deliver(sdk.CaptureWithheld(self._withheld_at, self._position - self._withheld_at,
                                          len(withheld), first, last))

    async def _send(self, cmd: m.Command) -> None:
        self.commands.append(cmd)
        self._new_command.set()
        self._advance()
        body = cmd.body
        kind = type(body).__name__
        if isinstance(body, m.PlayAudio):
            self._playout.play(body.pcm, body.sample_rate,
                               not getattr(body, "uninterruptible", False), self.now)
        elif isinstance(body, m.ClearAudio):
            for event in self._playout.clear(self.now):
                self._deliver(event)
        elif isinstance(body, m.Mark | m.HangUp | m.Transfer):
            self._playout.marker(body)
        elif kind == "PauseCapture" and self._paused is None:
            self._paused, self._withheld_at = [], self._position
        elif kind == "ResumeCapture":
            self._resume()
        self._advance()

    def _raise_handler_error(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]
