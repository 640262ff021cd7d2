"""``python -m gateway.replay``: the ``replay`` command on its own.

``run`` uses it when the calling process already has Autobahn on Twisted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.replay.command import add_arguments, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.replay")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
