"""What Kafka compression costs the node and saves the broker, on caller speech.

    python -m kgw_bench.compression_cost [--minutes 2] [--rate 16000]

Speech: eSpeak NG (Debian's ``espeak-ng``) reads a text in turns with 1 s
pauses, at the call's rate; once as is, once with line noise at -55 dBFS (a
real line is never digital silence). The audio becomes the node's inbound
records (one per 20 ms frame, as ``gateway.records`` encodes them) and the
records become batches exactly as the node's producer builds them (aiokafka's
``BatchBuilder``, which compresses in ``build``) of 1, 4 and 16 records: at
50 calls on 12 partitions a partition gets ~200 records a second, so a batch
holds a few. Printed per codec: CPU per record (this process, build and
compression) and bytes on the broker per call-hour of caller audio. Figures,
not assertions: run it on the machine you deploy to.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka.producer.message_accumulator import BatchBuilder

from gateway import records, topics
from gateway.core import model as m
from gateway.core.resample import to_call_rate
from gateway.core.wav import decode_wav
from gateway.kafka import zstd

CODECS = (None, "gzip", "snappy", "lz4", "zstd")
BATCHES = (1, 4, 16)
TEXT = (
    "Hello, thank you for calling. I would like to check the status of my order. "
    "It was placed last Tuesday and it has not arrived yet. The order number is four "
    "five seven two nine. Could you also tell me when the next delivery slot is? "
    "I am at home most afternoons, but not on Friday. Yes, that address is correct. "
    "Thank you very much, that is all for today. Goodbye."
)


def speech(seconds: float, rate: int) -> bytes:
    """``seconds`` of eSpeak NG turns, 1 s of digital silence between them, at ``rate``."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("needs eSpeak NG: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s.wav"
        subprocess.run([espeak, "-w", str(out), TEXT], check=True)
        pcm, native = decode_wav(out.read_bytes())
    turn = to_call_rate(pcm, native, rate)
    pause = bytes(2 * rate)
    audio = b""
    while len(audio) < seconds * rate * 2:
        audio += turn + pause
    return audio[: int(seconds * rate) * 2]


def with_line_noise(pcm: bytes, dbfs: float = -55.0, seed: int = 1) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (dbfs / 20), samples.size)
    return np.clip(np.round(samples + noise), -32768, 32767).astype("<i2").tobytes()


def frames_as_records(pcm: bytes, rate: int) -> list[bytes]:
    frame = rate // 50 * 2
    out = []
    for k in range(len(pcm) // frame):
        at = 1_700_000_000 + k * 0.02
        rec = m.Inbound(call_id="c0a8f2d6-5b1e-4d8e-9f3a-7c2b1d0e9f84", record_seq=k + 1,
                        at=at, body=m.CallerAudio(seq=k, media_position_samples=k * frame // 2,
                                                  received_at=at,
                                                  pcm=pcm[k * frame:(k + 1) * frame],
                                                  sample_rate=rate))
        out.append(records.encode_inbound(rec, "gw-1", 0.0))
    return out


def measure(values: list[bytes], codec: str | None, batch: int) -> tuple[float, int]:
    """(CPU seconds, bytes) to build every batch of ``batch`` records."""
    key = b"c0a8f2d6-5b1e-4d8e-9f3a-7c2b1d0e9f84"
    headers = topics.call_headers("knowlarity.calls.commands.gw-1", 16000, "gw-1")
    codec_id = {None: 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
    size = 0
    began = time.process_time()
    for i in range(0, len(values), batch):
        b = BatchBuilder(1 << 20, codec_id)
        for v in values[i:i + batch]:
            b.append(timestamp=None, key=key, value=v, headers=headers)
        size += len(b._build())
    return time.process_time() - began, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kgw_bench.compression_cost",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="caller audio measured")
    parser.add_argument("--rate", type=int, default=16000, help="the call's sample rate")
    args = parser.parse_args(argv)
    zstd.install()  # zstd as the node compresses it: one reused context (gateway.kafka.zstd)
    clean = speech(args.minutes * 60, args.rate)
    hours = len(clean) / 2 / args.rate / 3600
    for label, pcm in (("speech, silent pauses", clean),
                       ("speech, line noise at -55 dBFS", with_line_noise(clean))):
        values = frames_as_records(pcm, args.rate)
        print(f"\n{label}: {len(values)} records, {sum(map(len, values)) / len(values):.0f} B "
              f"each before the batch")
        print(f"{'codec':<8}" + "".join(f"{f'batch {b}: us/rec MB/call-h':>30}" for b in BATCHES))
        for codec in CODECS:
            row = f"{codec or 'none':<8}"
            for batch in BATCHES:
                cpu, size = min((measure(values, codec, batch) for _ in range(3)),
                                key=lambda r: r[0])
                row += f"{cpu / len(values) * 1e6:>18.1f} {size / hours / 1e6:>11.1f}"
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
