"""Summarise a py-spy raw profile: where the gateway's time goes.

``python -m kgw_bench.profile profile-PID.txt [--top N]`` prints the
functions with the most samples on top of the stack (self) and anywhere in
it (inclusive), as percentages of all samples.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def summarise(path: Path, top: int = 25) -> str:
    total = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "-- self"]
    out += [f"{n / total * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("-- inclusive")
    out += [f"{n / total * 100:5.1f}%  {f}" for f, n in inclusive.most_common(top + 15)]
    return "\n".join(out)


def _short(frame: str) -> str:
    """'fn (path/to/module.py:12)' -> 'fn (module.py)': lines split one function's samples."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarise(args.profile, args.top))


if __name__ == "__main__":
    main()
