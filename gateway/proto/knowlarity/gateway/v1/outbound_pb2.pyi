from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_KIND_UNSPECIFIED: _ClassVar[ControlKind]
    CONTROL_KIND_HANG_UP: _ClassVar[ControlKind]
    CONTROL_KIND_TRANSFER: _ClassVar[ControlKind]
    CONTROL_KIND_KILL_AUDIO: _ClassVar[ControlKind]
CONTROL_KIND_UNSPECIFIED: ControlKind
CONTROL_KIND_HANG_UP: ControlKind
CONTROL_KIND_TRANSFER: ControlKind
CONTROL_KIND_KILL_AUDIO: ControlKind

class OutboundRecord(_message.Message):
    __slots__ = ("call_id", "node_id", "sent_unix_us", "audio", "control", "dropped")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    node_id: str
    sent_unix_us: int
    audio: AudioSent
    control: ControlSent
    dropped: OutboundDropped
    def __init__(self, call_id: _Optional[str] = ..., node_id: _Optional[str] = ..., sent_unix_us: _Optional[int] = ..., audio: _Optional[_Union[AudioSent, _Mapping]] = ..., control: _Optional[_Union[ControlSent, _Mapping]] = ..., dropped: _Optional[_Union[OutboundDropped, _Mapping]] = ...) -> None: ...

class OutboundDropped(_message.Message):
    __slots__ = ("records", "audio_clips")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CLIPS_FIELD_NUMBER: _ClassVar[int]
    records: int
    audio_clips: int
    def __init__(self, records: _Optional[int] = ..., audio_clips: _Optional[int] = ...) -> None: ...

class AudioSent(_message.Message):
    __slots__ = ("pcm", "sample_rate", "media_position_samples")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_POSITION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate: int
    media_position_samples: int
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., media_position_samples: _Optional[int] = ...) -> None: ...

class ControlSent(_message.Message):
    __slots__ = ("kind", "frame")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    kind: ControlKind
    frame: str
    def __init__(self, kind: _Optional[_Union[ControlKind, str]] = ..., frame: _Optional[str] = ...) -> None: ...
