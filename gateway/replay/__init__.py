"""``knowlarity-gateway replay``: places a recorded call again, as the provider would.

Public API: ``read_call`` and ``RecordedCall`` (one call's inbound records from
the bus), ``with_call_id`` (its start message under a new id) and, for the
command line, ``REPLAY_SETTINGS``, ``add_arguments`` and ``run``. Placing the
call needs a process without Autobahn on Twisted (``run`` starts one if needed).
"""

from __future__ import annotations

from gateway.replay.command import REPLAY_SETTINGS, add_arguments, run
from gateway.replay.reading import CallNotFound, RecordedCall, read_call
from gateway.replay.start import with_call_id

__all__ = ["REPLAY_SETTINGS", "CallNotFound", "RecordedCall", "add_arguments", "read_call",
           "run", "with_call_id"]
