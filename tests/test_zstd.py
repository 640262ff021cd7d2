"""The producer's zstd (gateway.kafka.zstd): what aiokafka's readers and cramjam decode."""

from __future__ import annotations

import cramjam
import numpy as np
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from gateway.kafka import zstd

_ZSTD = 4  # Kafka's compression type id


def _records(n: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [rng.normal(0, 300, 320).astype("<i2").tobytes() for _ in range(n)]


def _build(values: list[bytes]) -> bytes:
    b = BatchBuilder(256 * 1024, _ZSTD)
    for v in values:
        b.append(key=b"call-1", value=v, timestamp=None, headers=[("kgw-type", b"inbound")])
    return bytes(b._build())


def test_install_replaces_the_builders_codec_and_batches_still_read() -> None:
    values = _records(5)
    zstd.install()
    zstd.install()  # twice: still one encoder
    assert zstd.installed()
    batch = MemoryRecords(_build(values)).next_batch()
    assert batch.compression_type == _ZSTD
    read = list(batch)  # a batch reads once
    assert [r.value for r in read] == values
    assert [list(r.headers) for r in read] == [[("kgw-type", b"inbound")]] * 5


def test_the_reused_context_makes_standard_frames_at_the_same_level() -> None:
    enc = zstd._Encoder()
    for payload in _records(3):
        out = enc(payload)
        assert bytes(cramjam.zstd.decompress(out)) == payload
        assert out == bytes(cramjam.zstd.compress(payload, level=zstd.LEVEL))
    assert bytes(cramjam.zstd.decompress(enc(b"x" * 4000, level=9))) == b"x" * 4000
