from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_DIRECTION_UNSPECIFIED: _ClassVar[CallDirection]
    CALL_DIRECTION_INBOUND: _ClassVar[CallDirection]
    CALL_DIRECTION_OUTBOUND: _ClassVar[CallDirection]

class PlaybackEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAYBACK_EVENT_KIND_UNSPECIFIED: _ClassVar[PlaybackEventKind]
    PLAYBACK_EVENT_KIND_MARK_REACHED: _ClassVar[PlaybackEventKind]
    PLAYBACK_EVENT_KIND_CLEARED: _ClassVar[PlaybackEventKind]
    PLAYBACK_EVENT_KIND_AUDIO_DROPPED: _ClassVar[PlaybackEventKind]
    PLAYBACK_EVENT_KIND_MARK_CLEARED: _ClassVar[PlaybackEventKind]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_CALLER_HANGUP: _ClassVar[EndReason]
    END_REASON_BOT_HANGUP: _ClassVar[EndReason]
    END_REASON_TRANSFERRED: _ClassVar[EndReason]
    END_REASON_ENDING_TIMEOUT: _ClassVar[EndReason]
    END_REASON_PROTOCOL_ERROR: _ClassVar[EndReason]
    END_REASON_NODE_SHUTDOWN: _ClassVar[EndReason]
    END_REASON_REPLACED: _ClassVar[EndReason]
    END_REASON_CONNECTION_LOST: _ClassVar[EndReason]
    END_REASON_IDLE_TIMEOUT: _ClassVar[EndReason]
    END_REASON_NODE_LOST: _ClassVar[EndReason]
CALL_DIRECTION_UNSPECIFIED: CallDirection
CALL_DIRECTION_INBOUND: CallDirection
CALL_DIRECTION_OUTBOUND: CallDirection
PLAYBACK_EVENT_KIND_UNSPECIFIED: PlaybackEventKind
PLAYBACK_EVENT_KIND_MARK_REACHED: PlaybackEventKind
PLAYBACK_EVENT_KIND_CLEARED: PlaybackEventKind
PLAYBACK_EVENT_KIND_AUDIO_DROPPED: PlaybackEventKind
PLAYBACK_EVENT_KIND_MARK_CLEARED: PlaybackEventKind
END_REASON_UNSPECIFIED: EndReason
END_REASON_CALLER_HANGUP: EndReason
END_REASON_BOT_HANGUP: EndReason
END_REASON_TRANSFERRED: EndReason
END_REASON_ENDING_TIMEOUT: EndReason
END_REASON_PROTOCOL_ERROR: EndReason
END_REASON_NODE_SHUTDOWN: EndReason
END_REASON_REPLACED: EndReason
END_REASON_CONNECTION_LOST: EndReason
END_REASON_IDLE_TIMEOUT: EndReason
END_REASON_NODE_LOST: EndReason

class InboundRecord(_message.Message):
    __slots__ = ("call_id", "node_id", "time_unix_us", "record_seq", "started", "audio", "provider_event", "playback", "ended", "dropped", "command_rejected", "capture_withheld")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    RECORD_SEQ_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_EVENT_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COMMAND_REJECTED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_WITHHELD_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    node_id: str
    time_unix_us: int
    record_seq: int
    started: CallStarted
    audio: CallerAudio
    provider_event: ProviderEvent
    playback: PlaybackEvent
    ended: CallEnded
    dropped: RecordsDropped
    command_rejected: CommandRejected
    capture_withheld: CaptureWithheld
    def __init__(self, call_id: _Optional[str] = ..., node_id: _Optional[str] = ..., time_unix_us: _Optional[int] = ..., record_seq: _Optional[int] = ..., started: _Optional[_Union[CallStarted, _Mapping]] = ..., audio: _Optional[_Union[CallerAudio, _Mapping]] = ..., provider_event: _Optional[_Union[ProviderEvent, _Mapping]] = ..., playback: _Optional[_Union[PlaybackEvent, _Mapping]] = ..., ended: _Optional[_Union[CallEnded, _Mapping]] = ..., dropped: _Optional[_Union[RecordsDropped, _Mapping]] = ..., command_rejected: _Optional[_Union[CommandRejected, _Mapping]] = ..., capture_withheld: _Optional[_Union[CaptureWithheld, _Mapping]] = ...) -> None: ...

class CallStarted(_message.Message):
    __slots__ = ("reply_topic", "sample_rate", "caller", "callee", "direction", "provider_campaign", "provider_fields_json", "raw_start_message", "request_path", "start_message_shape")
    REPLY_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    RAW_START_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PATH_FIELD_NUMBER: _ClassVar[int]
    START_MESSAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    reply_topic: str
    sample_rate: int
    caller: str
    callee: str
    direction: CallDirection
    provider_campaign: str
    provider_fields_json: str
    raw_start_message: str
    request_path: str
    start_message_shape: str
    def __init__(self, reply_topic: _Optional[str] = ..., sample_rate: _Optional[int] = ..., caller: _Optional[str] = ..., callee: _Optional[str] = ..., direction: _Optional[_Union[CallDirection, str]] = ..., provider_campaign: _Optional[str] = ..., provider_fields_json: _Optional[str] = ..., raw_start_message: _Optional[str] = ..., request_path: _Optional[str] = ..., start_message_shape: _Optional[str] = ...) -> None: ...

class CallerAudio(_message.Message):
    __slots__ = ("seq", "media_position_samples", "received_unix_us", "pcm", "sample_rate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MEDIA_POSITION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    media_position_samples: int
    received_unix_us: int
    pcm: bytes
    sample_rate: int
    def __init__(self, seq: _Optional[int] = ..., media_position_samples: _Optional[int] = ..., received_unix_us: _Optional[int] = ..., pcm: _Optional[bytes] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class ProviderEvent(_message.Message):
    __slots__ = ("text", "received_unix_us")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    text: str
    received_unix_us: int
    def __init__(self, text: _Optional[str] = ..., received_unix_us: _Optional[int] = ...) -> None: ...

class PlaybackEvent(_message.Message):
    __slots__ = ("kind", "mark_name", "samples", "detail", "heard_ms")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MARK_NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    HEARD_MS_FIELD_NUMBER: _ClassVar[int]
    kind: PlaybackEventKind
    mark_name: str
    samples: int
    detail: str
    heard_ms: int
    def __init__(self, kind: _Optional[_Union[PlaybackEventKind, str]] = ..., mark_name: _Optional[str] = ..., samples: _Optional[int] = ..., detail: _Optional[str] = ..., heard_ms: _Optional[int] = ...) -> None: ...

class CallEnded(_message.Message):
    __slots__ = ("reason", "detail", "close_code", "audio_chunks", "audio_samples", "duration_ms", "turns", "turn_latency_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CLOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    TURN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    reason: EndReason
    detail: str
    close_code: int
    audio_chunks: int
    audio_samples: int
    duration_ms: int
    turns: int
    turn_latency_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reason: _Optional[_Union[EndReason, str]] = ..., detail: _Optional[str] = ..., close_code: _Optional[int] = ..., audio_chunks: _Optional[int] = ..., audio_samples: _Optional[int] = ..., duration_ms: _Optional[int] = ..., turns: _Optional[int] = ..., turn_latency_ms: _Optional[_Iterable[int]] = ...) -> None: ...

class RecordsDropped(_message.Message):
    __slots__ = ("records", "first_record_seq", "last_record_seq", "audio_chunks", "topic")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECORD_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_RECORD_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    records: int
    first_record_seq: int
    last_record_seq: int
    audio_chunks: int
    topic: str
    def __init__(self, records: _Optional[int] = ..., first_record_seq: _Optional[int] = ..., last_record_seq: _Optional[int] = ..., audio_chunks: _Optional[int] = ..., topic: _Optional[str] = ...) -> None: ...

class CommandRejected(_message.Message):
    __slots__ = ("command_id", "reason")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    reason: str
    def __init__(self, command_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CaptureWithheld(_message.Message):
    __slots__ = ("first_media_position_samples", "samples", "frames", "first_received_unix_us", "last_received_unix_us", "paused_unix_us")
    FIRST_MEDIA_POSITION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECEIVED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    first_media_position_samples: int
    samples: int
    frames: int
    first_received_unix_us: int
    last_received_unix_us: int
    paused_unix_us: int
    def __init__(self, first_media_position_samples: _Optional[int] = ..., samples: _Optional[int] = ..., frames: _Optional[int] = ..., first_received_unix_us: _Optional[int] = ..., last_received_unix_us: _Optional[int] = ..., paused_unix_us: _Optional[int] = ...) -> None: ...
