"""``python -m kgw_bench.loadgen``: see ``kgw_bench.loadgen.cli``."""

import sys

from kgw_bench.loadgen.cli import main

sys.exit(main())
