"""One call's caller side, as ``replay`` places it again: read by ``audit``'s reader.

``gateway.audit.reading.fetch_call`` finds the call's partition, starts at the
given time and stops at its ``ended`` (or waits for it); this module keeps what
a replay needs of those records: the start message, the caller audio with its
received times, the end and the node's turn figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.reading import fetch_call
from gateway.kafka_access import Target

__all__ = ["CallNotFound", "RecordedCall", "read_call", "recorded"]


class CallNotFound(Exception):
    """The call's records are not on the bus in the window read (or it has not ended)."""


@dataclass(frozen=True)
class RecordedCall:
    call_id: str
    started: Any  # the InboundRecord with the call's (last) ``started``
    # (received_unix_us, pcm) of each caller audio record, in order.
    audio: tuple[tuple[int, bytes], ...]
    ended: Any | None  # the InboundRecord with its ``ended``; None if not read yet
    # Records lost before reaching Kafka, as the call's ``dropped`` notes count them.
    records_dropped: int = 0

    @property
    def sample_rate(self) -> int:
        return int(self.started.started.sample_rate)

    @property
    def turn_latency_ms(self) -> tuple[int, ...]:
        return tuple(self.ended.ended.turn_latency_ms) if self.ended is not None else ()

    @property
    def turns(self) -> int:
        return int(self.ended.ended.turns) if self.ended is not None else 0


def recorded(call_id: str, inbound: Sequence[Any], where: str) -> RecordedCall:
    """The replay's view of a call's inbound records (from its ``started`` on, as the
    reader hands them). Raises ``CallNotFound`` if there is no start or no end."""
    started, ended = None, None
    audio: list[tuple[int, bytes]] = []
    dropped = 0
    for rec in inbound:
        body = rec.WhichOneof("body")
        if body == "started":
            started = rec
        elif started is None:
            continue  # the tail of an earlier call of the same id
        elif body == "audio":
            audio.append((rec.audio.received_unix_us, rec.audio.pcm))
        elif body == "dropped":
            dropped += rec.dropped.records
        elif body == "ended":
            ended = rec
    if started is None:
        raise CallNotFound(f"no started record of call {call_id} on {where} in the window read")
    if ended is None:
        raise CallNotFound(f"call {call_id} has no ended record yet on {where}")
    return RecordedCall(call_id, started, tuple(audio), ended, dropped)


async def read_call(kafka: Target, prefix: str, call_id: str, *, since_unix_s: float,
                    wait_s: float = 0.0) -> RecordedCall:
    """The call's records from its last ``started`` to its ``ended``.

    ``wait_s`` 0: read up to the partition's end as it is now. Above 0: keep waiting
    that long for the ``ended`` (a call that is still going, or just placed).
    Raises ``CallNotFound``.
    """
    try:
        got = await fetch_call(kafka, prefix, call_id, since_us=int(since_unix_s * 1e6),
                               lookback_s=0, wait_s=wait_s, outbound=False)
    except LookupError as e:  # no inbound topic
        raise CallNotFound(str(e)) from None
    return recorded(call_id, got.inbound, f"partition {got.partition} of {prefix}.calls.inbound")
