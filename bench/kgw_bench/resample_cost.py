"""How long bot-audio conversion holds the reactor: whole commands against the pieces playout uses.

    python -m kgw_bench.resample_cost [--repeat 20]

For the largest play command (``--max-play-bytes``, 1 MiB by default) at
every supported rate into every call rate, prints the time to convert it at
once and the longest single step of ``Converter`` (what one playout pump
may cost). Figures, not assertions: run it on the machine you deploy to.
"""

from __future__ import annotations

import argparse
import time

from gateway.core.commands import PLAY_SAMPLE_RATES, CommandLimits
from gateway.core.knowlarity import SAMPLE_RATES
from gateway.core.resample import Converter, to_call_rate


def measure(size: int, rate: int, call_rate: int, repeat: int) -> tuple[float, float]:
    """(best whole-command seconds, worst single piece seconds)."""
    pcm = bytes(size)
    whole = min(_timed(lambda: to_call_rate(pcm, rate, call_rate)) for _ in range(repeat))
    worst_piece = 0.0
    for _ in range(max(1, repeat // 5)):
        conv = Converter(pcm, rate, call_rate)
        while not conv.done:
            t = time.perf_counter()
            conv.next_piece()
            worst_piece = max(worst_piece, time.perf_counter() - t)
    return whole, worst_piece


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--bytes", type=int, default=CommandLimits().max_play_bytes)
    args = parser.parse_args()
    print(f"one play command of {args.bytes} bytes; times in ms")
    print(f"{'bot Hz':>7} {'call Hz':>7} {'whole':>8} {'worst piece':>12}")
    worst_whole = worst_piece = 0.0
    for rate in sorted(PLAY_SAMPLE_RATES):
        for call_rate in sorted(SAMPLE_RATES):
            if rate == call_rate:
                continue
            whole, piece = measure(args.bytes, rate, call_rate, args.repeat)
            worst_whole, worst_piece = max(worst_whole, whole), max(worst_piece, piece)
            print(f"{rate:>7} {call_rate:>7} {whole * 1e3:>8.2f} {piece * 1e3:>12.3f}")
    print(f"worst: whole command {worst_whole * 1e3:.2f} ms, one piece {worst_piece * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
