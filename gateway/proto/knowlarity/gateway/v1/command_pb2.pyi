from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Command(_message.Message):
    __slots__ = ("call_id", "command_id", "sent_unix_us", "play", "clear", "mark", "hang_up", "transfer", "pause_capture", "resume_capture")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    PLAY_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    MARK_FIELD_NUMBER: _ClassVar[int]
    HANG_UP_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    PAUSE_CAPTURE_FIELD_NUMBER: _ClassVar[int]
    RESUME_CAPTURE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    command_id: str
    sent_unix_us: int
    play: PlayAudio
    clear: ClearAudio
    mark: Mark
    hang_up: HangUp
    transfer: Transfer
    pause_capture: PauseCapture
    resume_capture: ResumeCapture
    def __init__(self, call_id: _Optional[str] = ..., command_id: _Optional[str] = ..., sent_unix_us: _Optional[int] = ..., play: _Optional[_Union[PlayAudio, _Mapping]] = ..., clear: _Optional[_Union[ClearAudio, _Mapping]] = ..., mark: _Optional[_Union[Mark, _Mapping]] = ..., hang_up: _Optional[_Union[HangUp, _Mapping]] = ..., transfer: _Optional[_Union[Transfer, _Mapping]] = ..., pause_capture: _Optional[_Union[PauseCapture, _Mapping]] = ..., resume_capture: _Optional[_Union[ResumeCapture, _Mapping]] = ...) -> None: ...

class PlayAudio(_message.Message):
    __slots__ = ("pcm", "sample_rate", "uninterruptible", "at_caller_ms")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    UNINTERRUPTIBLE_FIELD_NUMBER: _ClassVar[int]
    AT_CALLER_MS_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate: int
    uninterruptible: bool
    at_caller_ms: int
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., uninterruptible: _Optional[bool] = ..., at_caller_ms: _Optional[int] = ...) -> None: ...

class ClearAudio(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Mark(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class HangUp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("parameters",)
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[TransferParameter]
    def __init__(self, parameters: _Optional[_Iterable[_Union[TransferParameter, _Mapping]]] = ...) -> None: ...

class TransferParameter(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class PauseCapture(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeCapture(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
