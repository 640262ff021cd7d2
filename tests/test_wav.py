"""WAV encoding and decoding of mono 16-bit PCM clips."""

from __future__ import annotations

import io
import struct
import wave

import pytest

from gateway.core.wav import decode_wav, encode_wav

PCM = bytes([0x01, 0x00, 0xFF, 0x7F, 0x00, 0x80])  # three samples: 1, 32767, -32768
PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")
FLOAT_GUID = bytes.fromhex("0300000000001000800000aa00389b71")


def _fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return struct.pack("<4sIHHIIHH", b"fmt ", 16, tag, channels, rate, rate * block, block, bits)


def _extensible_fmt(guid: bytes, rate: int = 16000) -> bytes:
    body = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 2, 2, 16, 22, 16, 0x4) + guid
    return struct.pack("<4sI", b"fmt ", len(body)) + body


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return struct.pack("<4sI", b"RIFF", len(body)) + body


def _data(pcm: bytes) -> bytes:
    return struct.pack("<4sI", b"data", len(pcm)) + pcm


@pytest.mark.parametrize(
    ("pcm", "rate", "expected_header"),
    [
        (
            PCM,
            16000,
            b"RIFF" + struct.pack("<I", 42) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
            + b"data" + struct.pack("<I", 6),
        ),
        (
            b"",
            8000,
            b"RIFF" + struct.pack("<I", 36) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
            + b"data" + struct.pack("<I", 0),
        ),
        (
            b"\x00\x00" * 441,
            44100,
            b"RIFF" + struct.pack("<I", 36 + 882) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 44100, 88200, 2, 16)
            + b"data" + struct.pack("<I", 882),
        ),
    ],
)  # fmt: skip
def test_encode_writes_canonical_header(pcm: bytes, rate: int, expected_header: bytes) -> None:
    """encode_wav writes the 44-byte canonical PCM header followed by the samples unchanged."""
    clip = encode_wav(pcm, rate)
    assert len(expected_header) == 44
    assert clip[:44] == expected_header
    assert clip[44:] == pcm


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_encoded_clip_reads_back_with_stdlib_wave(rate: int) -> None:
    """A clip from encode_wav is read by the standard library's wave module as mono 16-bit."""
    pcm = bytes(range(256)) * 3
    with wave.open(io.BytesIO(encode_wav(pcm, rate)), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getframerate() == rate
        assert reader.readframes(reader.getnframes()) == pcm


def test_decodes_clip_written_by_stdlib_wave() -> None:
    """decode_wav reads a clip written by the standard library's wave module."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(24000)
        writer.writeframes(PCM)
    assert decode_wav(buffer.getvalue()) == (PCM, 24000)


@pytest.mark.parametrize("samples", [0, 1, 159, 160, 8001])
def test_round_trip(samples: int) -> None:
    """decode_wav(encode_wav(pcm)) returns the same PCM and rate, including empty clips."""
    pcm = bytes((i * 37) % 256 for i in range(samples * 2))
    assert decode_wav(encode_wav(pcm, 16000)) == (pcm, 16000)


@pytest.mark.parametrize(
    ("clip", "rate"),
    [
        (_riff(_fmt(rate=8000), struct.pack("<4sI", b"LIST", 4) + b"INFO", _data(PCM)), 8000),
        (_riff(struct.pack("<4sI", b"LIST", 4) + b"INFO", _fmt(), _data(PCM)), 16000),
        # Odd-sized chunk followed by its pad byte.
        (_riff(_fmt(), struct.pack("<4sI", b"junk", 3) + b"abc\x00", _data(PCM)), 16000),
        (_riff(_fmt(), struct.pack("<4sI", b"fact", 4) + b"\x03\x00\x00\x00", _data(PCM)), 16000),
        (_riff(_extensible_fmt(PCM_GUID, 48000), _data(PCM)), 48000),
        # Trailing chunks after data are ignored.
        (_riff(_fmt(), _data(PCM), struct.pack("<4sI", b"LIST", 4) + b"INFO"), 16000),
    ],
    ids=["list-after-fmt", "list-before-fmt", "odd-chunk-padded", "fact", "extensible", "trailer"],
)
def test_decode_walks_chunks(clip: bytes, rate: int) -> None:
    """decode_wav skips unknown chunks, honours pad bytes and accepts extensible PCM."""
    assert decode_wav(clip) == (PCM, rate)


def test_decode_ignores_streaming_riff_size() -> None:
    """A RIFF size left at 0xFFFFFFFF by a streaming writer does not stop decoding."""
    clip = bytearray(encode_wav(PCM, 16000))
    clip[4:8] = b"\xff\xff\xff\xff"
    assert decode_wav(bytes(clip)) == (PCM, 16000)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (b"", "truncated"),
        (b"RIFF\x24\x00\x00", "truncated"),
        (b"RIFX" + encode_wav(PCM, 16000)[4:], "not a RIFF/WAVE"),
        (b"RIFF\x24\x00\x00\x00AVI " + encode_wav(PCM, 16000)[12:], "not b'WAVE'"),
        (_riff(_fmt(channels=2), _data(PCM + PCM[:2])), "2 channels"),
        (_riff(_fmt(bits=8), _data(PCM)), "8-bit"),
        (_riff(_fmt(tag=3, bits=32), _data(PCM[:4])), "IEEE float"),
        (_riff(_fmt(tag=0x55), _data(PCM)), "0x0055"),
        (_riff(_extensible_fmt(FLOAT_GUID), _data(PCM)), "sub-format is not PCM"),
        (_riff(_fmt(rate=0), _data(PCM)), "sample rate is 0"),
        (encode_wav(PCM, 16000)[:-1], "truncated: data chunk declares 6 bytes, 5 present"),
        (encode_wav(PCM, 16000)[:30], "truncated inside the fmt chunk"),
        (_riff(_data(PCM), _fmt()), "data chunk comes before any fmt"),
        (_riff(_fmt()), "no data chunk"),
        (_riff(struct.pack("<4sI", b"LIST", 4) + b"INFO"), "no fmt chunk"),
        (_riff(_fmt(), _data(PCM[:3])), "not whole 16-bit samples"),
        (_riff(struct.pack("<4sIHH", b"fmt ", 4, 1, 1), _data(PCM)), "fmt chunk too short"),
    ],
    ids=[
        "empty", "short-header", "rifx", "avi", "stereo", "8-bit", "float", "mp3-tag",
        "extensible-float", "zero-rate", "truncated-data", "truncated-fmt", "data-first",
        "no-data", "no-fmt", "odd-data", "short-fmt",
    ],
)  # fmt: skip
def test_decode_rejects(clip: bytes, message: str) -> None:
    """decode_wav raises ValueError naming the problem for anything but mono 16-bit PCM."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        decode_wav(clip)


@pytest.mark.parametrize(
    ("pcm", "rate", "message"),
    [(b"\x00\x00\x00", 16000, "odd"), (PCM, 0, "positive"), (PCM, -8000, "positive")],
)
def test_encode_rejects(pcm: bytes, rate: int, message: str) -> None:
    """encode_wav refuses a partial sample or a non-positive sample rate."""
    with pytest.raises(ValueError, match=message):
        encode_wav(pcm, rate)
