"""The values the per-call core takes in and gives out.

Everything here is frozen and free of I/O. Times are seconds as a float, as
given by the injected clock (``IReactorTime.seconds()``); the edges turn them
into wire formats. Translation to protobuf lives in ``gateway.records``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

# --- the call as the provider describes it ---------------------------------


class Direction(enum.Enum):
    UNSPECIFIED = "unspecified"
    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True)
class CallStart:
    """The provider's first text frame, parsed."""

    call_id: str
    sample_rate: int
    caller: str
    callee: str
    direction: Direction
    provider_campaign: str
    # Every field the provider sent, known or not; an encoded ``metadata``
    # string is decoded to a mapping.
    fields: Mapping[str, object]
    # Which observed shape it came in (see PROTOCOL.md), for operators.
    shape: str
    raw: str


# --- records a node publishes on the inbound topic ---------------------------


class EndReason(enum.Enum):
    CALLER_HANGUP = "caller_hangup"
    BOT_HANGUP = "bot_hangup"
    TRANSFERRED = "transferred"
    ENDING_TIMEOUT = "ending_timeout"
    PROTOCOL_ERROR = "protocol_error"
    NODE_SHUTDOWN = "node_shutdown"
    REPLACED = "replaced"
    CONNECTION_LOST = "connection_lost"
    IDLE_TIMEOUT = "idle_timeout"
    NODE_LOST = "node_lost"


class PlaybackKind(enum.Enum):
    MARK_REACHED = "mark_reached"
    CLEARED = "cleared"
    AUDIO_DROPPED = "audio_dropped"
    MARK_CLEARED = "mark_cleared"


@dataclass(frozen=True)
class CallStarted:
    start: CallStart
    reply_topic: str
    request_path: str


@dataclass(frozen=True)
class CallerAudio:
    seq: int
    media_position_samples: int
    received_at: float
    pcm: bytes
    sample_rate: int


@dataclass(frozen=True)
class ProviderEvent:
    text: str
    received_at: float


@dataclass(frozen=True)
class PlaybackEvent:
    kind: PlaybackKind
    mark_name: str = ""
    samples: int = 0
    detail: str = ""
    # MARK_REACHED / MARK_CLEARED: ms of the mark's segment played (see inbound.proto).
    heard_ms: int = 0


@dataclass(frozen=True)
class CallEnded:
    reason: EndReason
    detail: str = ""
    close_code: int = 0
    audio_chunks: int = 0
    audio_samples: int = 0
    duration_ms: int = 0
    # Turns measured (see gateway.core.turns) and the first MAX_LISTED_TURNS latencies, ms.
    turns: int = 0
    turn_latency_ms: tuple[int, ...] = ()


@dataclass(frozen=True)
class RecordsDropped:
    """The node's buffer overflowed; these records of the call were lost."""

    records: int
    first_record_seq: int
    last_record_seq: int
    audio_chunks: int
    topic: str = ""


@dataclass(frozen=True)
class CommandRejected:
    """A command the node could not carry out; nothing was sent to the provider."""

    command_id: str
    reason: str


@dataclass(frozen=True)
class CaptureWithheld:
    """The caller audio one capture pause withheld: counted, never kept."""

    first_media_position_samples: int
    samples: int
    frames: int
    # Receive times of the first and last withheld frame; None if none was withheld.
    first_received_at: float | None
    last_received_at: float | None
    paused_at: float


InboundBody = (
    CallStarted | CallerAudio | ProviderEvent | PlaybackEvent | CallEnded | RecordsDropped
    | CommandRejected | CaptureWithheld
)


@dataclass(frozen=True)
class Inbound:
    call_id: str
    record_seq: int
    at: float
    body: InboundBody


# --- commands bots send ------------------------------------------------------


@dataclass(frozen=True)
class PlayAudio:
    pcm: bytes
    sample_rate: int
    # Kept through a clear and played in full.
    uninterruptible: bool = False
    # Not sent before the caller's stream reached this point (ms from its first
    # sample); 0: as soon as the queue allows.
    at_caller_ms: int = 0


@dataclass(frozen=True)
class ClearAudio:
    pass


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class HangUp:
    pass


@dataclass(frozen=True)
class Transfer:
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PauseCapture:
    pass


@dataclass(frozen=True)
class ResumeCapture:
    pass


@dataclass(frozen=True)
class Refused:
    """A command decoded but refused by ``gateway.core.commands.check``: the call publishes a
    CommandRejected with this reason and does nothing else."""

    reason: str


CommandBody = (PlayAudio | ClearAudio | Mark | HangUp | Transfer | PauseCapture | ResumeCapture
               | Refused)


@dataclass(frozen=True)
class Command:
    call_id: str
    body: CommandBody
    command_id: str = ""
    sent_at: float = 0.0


# --- what was sent to the provider, for the audit topic ----------------------


class ControlKind(enum.Enum):
    HANG_UP = "hang_up"
    TRANSFER = "transfer"
    KILL_AUDIO = "kill_audio"


@dataclass(frozen=True)
class AudioSent:
    pcm: bytes
    sample_rate: int
    media_position_samples: int


@dataclass(frozen=True)
class ControlSent:
    kind: ControlKind
    frame: str


@dataclass(frozen=True)
class OutboundDropped:
    """Audit records of the call that never reached the broker."""

    records: int
    audio_clips: int


@dataclass(frozen=True)
class Outbound:
    call_id: str
    at: float
    body: AudioSent | ControlSent | OutboundDropped


# --- effects: what the core asks the edges to do ------------------------------


@dataclass(frozen=True)
class SendText:
    """Write one text frame to the provider's socket."""

    text: str


@dataclass(frozen=True)
class Publish:
    record: Inbound


@dataclass(frozen=True)
class PublishOutbound:
    record: Outbound


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm the named timer to fire ``delay`` seconds from now."""

    name: str
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class CallIdentified:
    """The start message named the call. Comes before its CallStarted: the node registers
    the call there, ending an older socket with the same id first, so that the older
    call's CallEnded precedes this call's CallStarted on the bus."""

    call_id: str


@dataclass(frozen=True)
class TurnMeasured:
    """A caller turn was answered: ``latency`` seconds from the end of the caller's speech
    to the first bot clip sent after it (gateway.core.turns). For the node's metrics."""

    latency: float


@dataclass(frozen=True)
class CloseSocket:
    code: int
    reason: str


Effect = (SendText | Publish | PublishOutbound | SetTimer | CancelTimer | CloseSocket
          | CallIdentified | TurnMeasured)

