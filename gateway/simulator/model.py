"""What a simulated call is asked to do (``CallOptions``) and what came of it (``CallResult``).

Plain frozen values, no I/O: the client fills them, the command line prints them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.stats import percentiles

__all__ = [
    "DEFAULT_CALLEE",
    "END_KINDS",
    "OK_ENDS",
    "CallOptions",
    "CallResult",
    "summarize",
]

DEFAULT_CALLEE = "+911234567890"

# How a call ended, from the simulated provider's point of view.
CALLER_HANGUP = "caller_hangup"  # we closed (1000) after streaming and lingering
BOT_HANGUP = "bot_hangup"  # the gateway sent a hang-up frame; we closed (1000)
TRANSFERRED = "transferred"  # the gateway sent a transfer frame; we closed (1000)
GATEWAY_CLOSED = "gateway_closed"  # the gateway closed the socket without hang-up/transfer
CONNECT_FAILED = "connect_failed"  # no WebSocket: TCP, TLS or the opening handshake failed
ERROR = "error"  # the simulator gave up on the call (it did not finish in time)
END_KINDS = (CALLER_HANGUP, BOT_HANGUP, TRANSFERRED, GATEWAY_CLOSED, CONNECT_FAILED, ERROR)
OK_ENDS = frozenset({CALLER_HANGUP, BOT_HANGUP, TRANSFERRED})


@dataclass(frozen=True)
class CallOptions:
    """One simulated call. Audio is ``frames`` if given, else ``pcm`` looped to ``seconds``,
    else generated speech-like audio (from ``seed``).

    Frame k is sent at ``t0 + k * frame_ms`` after the start message (t0), whatever
    the size of the frame. After the last frame's time is up the caller waits
    ``linger`` seconds for bot audio, then hangs up unless the gateway ended the
    call first.
    """

    sample_rate: int = 16000
    frame_ms: int = 20
    seconds: float = 10.0
    pcm: bytes | None = None  # mono s16le at sample_rate
    seed: int = 0
    linger: float = 2.0
    to: str = DEFAULT_CALLEE
    caller: str | None = None  # None: a random Indian mobile number
    call_id: str | None = None  # None: a fresh uuid4
    call_type: str = "inbound"
    campaign: str = ""
    # Sent verbatim instead of the documented start message (tests of other shapes).
    # The result's call_id is still ``call_id`` (or a fresh uuid4).
    start_message: str | None = None
    frames: Sequence[bytes] | None = None
    # With ``frames``: frame k goes out ``frame_offsets_s[k]`` seconds after the start
    # message instead of at ``k * frame_ms`` (a replay keeps the recorded gaps).
    frame_offsets_s: Sequence[float] | None = None
    subprotocols: tuple[str, ...] = ()
    verify_tls: bool = True
    open_timeout: float = 10.0  # TCP + TLS + WebSocket opening handshake
    close_timeout: float = 5.0  # waiting for the gateway to answer our close

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive; got {self.sample_rate}")
        if self.frame_ms <= 0 or self.sample_rate * self.frame_ms // 1000 <= 0:
            raise ValueError(f"frame_ms {self.frame_ms} holds no sample at {self.sample_rate} Hz")
        if not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise ValueError(f"seconds must be >= 0; got {self.seconds}")
        if not (self.linger >= 0 and math.isfinite(self.linger)):
            raise ValueError(f"linger must be >= 0; got {self.linger}")
        offsets = self.frame_offsets_s
        if offsets is not None and (
                self.frames is None or len(offsets) != len(self.frames)
                or any(b < a for a, b in zip(offsets, offsets[1:], strict=False))):
            raise ValueError("frame_offsets_s needs frames, one non-decreasing offset each")
        if self.pcm is not None and len(self.pcm) < 2:
            raise ValueError("pcm must hold at least one 16-bit sample")

    @property
    def frame_bytes(self) -> int:
        return self.sample_rate * self.frame_ms // 1000 * 2


@dataclass(frozen=True)
class CallResult:
    """What happened on one call. Times are from the event loop's monotonic clock.

    ``duration_s`` runs from the socket opening to it closing (or, for a call
    that never opened, from the connection attempt to its failure).
    ``time_to_first_audio_ms`` runs from sending the start message to the first
    ``playAudio`` frame. ``events`` are the gateway's text frames as decoded by
    ``gateway.core.knowlarity.decode_gateway_frame``, in arrival order.
    """

    call_id: str
    ended: str
    sample_rate: int
    connected: bool = False
    frames_sent: int = 0
    bytes_sent: int = 0
    audio_received_ms: float = 0.0
    play_frames: int = 0
    duration_s: float = 0.0
    time_to_first_audio_ms: float | None = None
    transfer_parameters: tuple[tuple[str, str], ...] = ()
    close_code: int | None = None
    close_reason: str = ""
    error: str = ""
    binary_frames: int = 0  # binary frames from the gateway: a protocol violation
    undecodable_frames: int = 0  # playAudio frames with broken content
    off_rate_play_frames: int = 0  # playAudio clips not at the call's sample rate
    heard_pcm: bytes = field(default=b"", repr=False)
    sent_pcm: bytes = field(default=b"", repr=False)
    events: list[object] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.connected and self.ended in OK_ENDS

    @property
    def audio_sent_ms(self) -> float:
        return len(self.sent_pcm) / 2 / self.sample_rate * 1000

    def to_json(self) -> dict[str, object]:
        """The result without audio or events, as JSON-ready values."""
        return {
            "call_id": self.call_id,
            "ended": self.ended,
            "connected": self.connected,
            "sample_rate": self.sample_rate,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "audio_sent_ms": round(self.audio_sent_ms, 3),
            "audio_received_ms": round(self.audio_received_ms, 3),
            "play_frames": self.play_frames,
            "duration_s": round(self.duration_s, 4),
            "time_to_first_audio_ms": _round(self.time_to_first_audio_ms),
            "transfer_parameters": [list(p) for p in self.transfer_parameters],
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "error": self.error,
            "binary_frames": self.binary_frames,
            "undecodable_frames": self.undecodable_frames,
            "off_rate_play_frames": self.off_rate_play_frames,
        }


def summarize(results: Sequence[CallResult], wall_s: float) -> dict[str, object]:
    """Totals over a run, JSON-ready."""
    ttfa = sorted(r.time_to_first_audio_ms for r in results if r.time_to_first_audio_ms is not None)
    ended = {kind: n for kind in END_KINDS if (n := sum(r.ended == kind for r in results))}
    return {
        "calls": len(results),
        "connected": sum(r.connected for r in results),
        "completed": sum(r.ok for r in results),
        "ended": ended,
        "frames_sent": sum(r.frames_sent for r in results),
        "audio_sent_s": round(sum(r.audio_sent_ms for r in results) / 1000, 3),
        "audio_heard_s": round(sum(r.audio_received_ms for r in results) / 1000, 3),
        "play_frames": sum(r.play_frames for r in results),
        "binary_frames": sum(r.binary_frames for r in results),
        "undecodable_frames": sum(r.undecodable_frames for r in results),
        "off_rate_play_frames": sum(r.off_rate_play_frames for r in results),
        "time_to_first_audio_ms": (
            {
                "min": _round(ttfa[0]),
                **percentiles(ttfa, (50, 95), ndigits=3),
                "max": _round(ttfa[-1]),
            }
            if ttfa
            else None
        ),
        "wall_s": round(wall_s, 3),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
