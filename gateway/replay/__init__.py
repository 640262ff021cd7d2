"""``knowlarity-gateway replay``: places a recorded call again, as the provider would.

Public API: ``read_call`` and ``RecordedCall`` (one call's inbound records from
the bus) and, for the command line, ``REPLAY_SETTINGS``, ``add_arguments`` and
``run``; the start message under a new id is the codec's
(``gateway.core.knowlarity.start_with_call_id``). Placing the call needs a
process without Autobahn on Twisted (``run`` starts one if needed).
"""

from __future__ import annotations

from gateway.replay.command import REPLAY_SETTINGS, add_arguments, run
from gateway.replay.reading import CallNotFound, RecordedCall, read_call

__all__ = ["REPLAY_SETTINGS", "CallNotFound", "RecordedCall", "add_arguments", "read_call",
           "run"]
