"""WAV clips of mono signed 16-bit little-endian PCM, the only audio format on the wire.

``encode_wav`` writes the canonical 44-byte RIFF/WAVE header that the provider's
``playAudio`` ``wave`` content expects. ``decode_wav`` reads clips written by
other tools too: it walks the chunk list (skipping ``LIST``, ``fact`` and the
like, honouring the pad byte after odd-sized chunks) and accepts plain PCM and
``WAVE_FORMAT_EXTENSIBLE`` with the PCM sub-format. Anything else raises
``ValueError`` saying what was found.
"""

from __future__ import annotations

import struct

__all__ = ["encode_wav", "decode_wav"]

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM without its first two bytes (which hold the format tag).
_PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_CHUNK_HEADER = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")
# RIFF sizes are 32-bit; the RIFF size field counts 36 header bytes past itself.
_MAX_PCM_BYTES = 0xFFFFFFFF - 36


def encode_wav(pcm: bytes, sample_rate: int) -> bytes:
    """Wrap mono s16le ``pcm`` in a canonical 44-byte WAV header."""
    if len(pcm) % 2:
        raise ValueError(f"PCM must hold whole 16-bit samples; got {len(pcm)} bytes (odd)")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive; got {sample_rate}")
    if len(pcm) > _MAX_PCM_BYTES:
        raise ValueError(f"PCM too long for a WAV file: {len(pcm)} bytes")
    header = _HEADER.pack(
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        1,  # channels
        sample_rate,
        sample_rate * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        len(pcm),
    )
    return header + pcm


def decode_wav(data: bytes) -> tuple[bytes, int]:
    """Return ``(pcm, sample_rate)`` from a mono 16-bit PCM WAV clip, or raise ``ValueError``."""
    if len(data) < 12:
        raise ValueError(f"WAV truncated: {len(data)} bytes, shorter than the RIFF header")
    riff, _, wave = struct.unpack_from("<4sI4s", data, 0)
    if riff != b"RIFF":
        raise ValueError(f"not a RIFF/WAVE clip: starts with {riff!r}")
    if wave != b"WAVE":
        raise ValueError(f"RIFF form is {wave!r}, not b'WAVE'")
    sample_rate: int | None = None
    offset = 12
    # The RIFF size field is ignored: streaming writers leave it 0 or 0xFFFFFFFF.
    while offset + _CHUNK_HEADER.size <= len(data):
        chunk_id, size = _CHUNK_HEADER.unpack_from(data, offset)
        body = offset + _CHUNK_HEADER.size
        if chunk_id == b"fmt ":
            if body + size > len(data):
                raise ValueError("WAV truncated inside the fmt chunk")
            sample_rate = _parse_fmt(data[body : body + size])
        elif chunk_id == b"data":
            if sample_rate is None:
                raise ValueError("WAV data chunk comes before any fmt chunk")
            if body + size > len(data):
                raise ValueError(
                    f"WAV truncated: data chunk declares {size} bytes, {len(data) - body} present"
                )
            if size % 2:
                raise ValueError(f"WAV data chunk holds {size} bytes, not whole 16-bit samples")
            return data[body : body + size], sample_rate
        # Chunks are word-aligned: an odd-sized chunk is followed by one pad byte.
        offset = body + size + (size & 1)
    if sample_rate is None:
        raise ValueError("WAV has no fmt chunk")
    raise ValueError("WAV has no data chunk")


def _parse_fmt(fmt: bytes) -> int:
    if len(fmt) < _FMT.size:
        raise ValueError(f"WAV fmt chunk too short: {len(fmt)} bytes")
    tag, channels, sample_rate, _, _, bits = _FMT.unpack_from(fmt, 0)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        # cbSize(2) validBits(2) channelMask(4) subFormat GUID(16) follow the basic 16 bytes.
        if len(fmt) < 40:
            raise ValueError(f"WAVE_FORMAT_EXTENSIBLE fmt chunk too short: {len(fmt)} bytes")
        sub_tag = int.from_bytes(fmt[24:26], "little")
        if fmt[26:40] != _PCM_GUID_TAIL or sub_tag != _WAVE_FORMAT_PCM:
            raise ValueError("WAVE_FORMAT_EXTENSIBLE sub-format is not PCM (float or compressed?)")
    elif tag != _WAVE_FORMAT_PCM:
        kind = "IEEE float" if tag == 3 else f"format tag {tag:#06x}"
        raise ValueError(f"WAV is {kind}, not integer PCM")
    if channels != 1:
        raise ValueError(f"WAV has {channels} channels; only mono is accepted")
    if bits != 16:
        raise ValueError(f"WAV is {bits}-bit; only 16-bit PCM is accepted")
    if sample_rate <= 0:
        raise ValueError(f"WAV sample rate is {sample_rate}")
    return int(sample_rate)
