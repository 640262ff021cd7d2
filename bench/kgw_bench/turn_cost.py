"""What the turn-latency detector costs per caller frame.

    python -m kgw_bench.turn_cost [--frames 50000]

Feeds ``gateway.core.turns.TurnMeter`` 20 ms frames at 16 kHz (speech-like
noise and silence in turns) and prints µs per frame: the energy alone
(``mean_square``) and the whole detector. Figures, not assertions: run it on
the machine you deploy to.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gateway.core.turns import TurnMeter, mean_square

RATE = 16000
FRAME = RATE // 50  # 20 ms


def frames(count: int) -> list[bytes]:
    """One second of noise at about -20 dBFS, then one of silence, and so on."""
    rng = np.random.default_rng(1)
    loud = [(rng.normal(0, 3000, FRAME)).astype("<i2").tobytes() for _ in range(50)]
    quiet = [bytes(FRAME * 2)] * 50
    cycle = loud + quiet
    return [cycle[i % len(cycle)] for i in range(count)]


def measure(count: int) -> tuple[float, float]:
    """(µs per frame for the energy, µs per frame for the detector), best of 5."""
    pcm = frames(count)
    energy = whole = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for p in pcm:
            mean_square(p)
        energy = min(energy, time.perf_counter() - t)
        meter = TurnMeter(RATE)
        t = time.perf_counter()
        at = 0.0
        for i, p in enumerate(pcm):
            meter.caller_audio(p, at)
            if i % 100 == 60:
                meter.bot_audio(at)
            at += 0.02
        whole = min(whole, time.perf_counter() - t)
    return energy / count * 1e6, whole / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50000)
    args = parser.parse_args()
    energy, whole = measure(args.frames)
    print(f"turn detector, {FRAME}-sample (20 ms) frames at {RATE} Hz, {args.frames} frames:")
    print(f"  energy (RMS)   {energy:6.2f} µs/frame")
    print(f"  whole detector {whole:6.2f} µs/frame  ({whole / 20000 * 100:.3f} % of a core "
          f"per live call)")


if __name__ == "__main__":
    main()
