from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeRecord(_message.Message):
    __slots__ = ("lease", "claim", "settled")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    claim: Claim
    settled: Settled
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., claim: _Optional[_Union[Claim, _Mapping]] = ..., settled: _Optional[_Union[Settled, _Mapping]] = ...) -> None: ...

class HeldCall(_message.Message):
    __slots__ = ("call_id", "started_unix_us", "ending")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    ENDING_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    started_unix_us: int
    ending: bool
    def __init__(self, call_id: _Optional[str] = ..., started_unix_us: _Optional[int] = ..., ending: _Optional[bool] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("node_id", "epoch", "seq", "time_unix_us", "lease_ms", "calls", "closed")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    epoch: int
    seq: int
    time_unix_us: int
    lease_ms: int
    calls: _containers.RepeatedCompositeFieldContainer[HeldCall]
    closed: bool
    def __init__(self, node_id: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., time_unix_us: _Optional[int] = ..., lease_ms: _Optional[int] = ..., calls: _Optional[_Iterable[_Union[HeldCall, _Mapping]]] = ..., closed: _Optional[bool] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("node_id", "epoch", "claimer_id", "claimer_epoch", "calls", "time_unix_us")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CLAIMER_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    epoch: int
    claimer_id: str
    claimer_epoch: int
    calls: _containers.RepeatedCompositeFieldContainer[HeldCall]
    time_unix_us: int
    def __init__(self, node_id: _Optional[str] = ..., epoch: _Optional[int] = ..., claimer_id: _Optional[str] = ..., claimer_epoch: _Optional[int] = ..., calls: _Optional[_Iterable[_Union[HeldCall, _Mapping]]] = ..., time_unix_us: _Optional[int] = ...) -> None: ...

class Settled(_message.Message):
    __slots__ = ("node_id", "epoch", "claimer_id", "claimer_epoch", "ended_call_ids", "time_unix_us")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CLAIMER_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENDED_CALL_IDS_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    epoch: int
    claimer_id: str
    claimer_epoch: int
    ended_call_ids: _containers.RepeatedScalarFieldContainer[str]
    time_unix_us: int
    def __init__(self, node_id: _Optional[str] = ..., epoch: _Optional[int] = ..., claimer_id: _Optional[str] = ..., claimer_epoch: _Optional[int] = ..., ended_call_ids: _Optional[_Iterable[str]] = ..., time_unix_us: _Optional[int] = ...) -> None: ...
