"""The load generator's wire format: RFC 6455 client frames and the stamped PCM they carry.

Pure functions and constants, no sockets: every call masks its frames with
its own key, and every caller frame is the same noise template whose first
``STAMP_BYTES`` are the send time (µs since the epoch, int64 little-endian).
"""

from __future__ import annotations

import base64
import hashlib
import random
import sys
from array import array

SAMPLE_RATE = 16000
FRAME_BYTES = 640  # 20 ms of s16le mono at 16 kHz
PERIOD_US = 20_000
STAMP_BYTES = 8
WAV_HEADER_BYTES = 44
MAX_LATENCY_US = 600_000_000  # a "stamp" further off than this is not one
MAX_MESSAGE_BYTES = 16 << 20

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
AUDIO_KEY = b'"audioContent":"'
AUDIO_KEY_LEN = len(AUDIO_KEY)
EQ = ord("=")


def noise_template(seed: int = 20240607) -> bytes:
    """640 bytes of loud-ish noise (about -14 dBFS RMS): the PCM of every frame."""
    rng = random.Random(seed)
    samples = array("h", (rng.randint(-12000, 12000) for _ in range(FRAME_BYTES // 2)))
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def mask(data: bytes, key: bytes) -> bytes:
    """RFC 6455 masking by one big-integer XOR (no per-byte Python loop)."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One unfragmented frame from the client: FIN set, masked with ``key``."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + key + mask(payload, key)


def accept_for(key: bytes) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode("ascii")

