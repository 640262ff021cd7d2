"""zstd for the producer's batches with one reused compression context.

aiokafka compresses each batch with ``cramjam.zstd.compress``, which sets up a
fresh zstd context every time: about 38 µs for a one-record batch of 20 ms of
audio, most of it the setup. A node sends thousands of small batches a second
(one per partition per linger tick): about 1 ms of CPU per call-second at 50
echo calls went to that setup. ``zstandard``'s compressor keeps its context
between calls: about 8 µs for the same batch, the same frame format and level
(3, Kafka's default), so brokers and consumers see no difference.

aiokafka has no hook for its codec; ``install`` replaces the function its
batch builders call. The loop is single-threaded, so one compressor serves.
"""

from __future__ import annotations

from types import ModuleType

import zstandard

__all__ = ["install", "installed"]

# The level aiokafka's own zstd_encode uses when none is given (KIP-390's default).
LEVEL = 3


def _builder_modules() -> list[ModuleType]:
    from aiokafka.record import default_records

    mods: list[ModuleType] = [default_records]
    try:
        from aiokafka.record._crecords import default_records as c_default_records
    except ImportError:  # AIOKAFKA_NO_EXTENSIONS, or a platform without the C builders
        pass
    else:
        mods.append(c_default_records)
    return mods


class _Encoder:
    def __init__(self) -> None:
        self._compressor = zstandard.ZstdCompressor(level=LEVEL)

    def __call__(self, payload: bytes, level: int | None = None) -> bytes:
        if level is not None and level != LEVEL:
            return zstandard.ZstdCompressor(level=level).compress(payload)
        return self._compressor.compress(payload)


def install() -> None:
    """Make aiokafka's batch builders compress zstd with a reused context (idempotent)."""
    encoder = _Encoder()
    for mod in _builder_modules():
        if not isinstance(getattr(mod, "zstd_encode", None), _Encoder):
            mod.zstd_encode = encoder  # type: ignore[attr-defined]


def installed() -> bool:
    return all(isinstance(getattr(mod, "zstd_encode", None), _Encoder)
               for mod in _builder_modules())
