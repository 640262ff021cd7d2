"""Knowlarity call-audio WebSockets <-> Apache Kafka gateway.

Layout: ``core`` (pure per-call logic and the Knowlarity codec), ``adapter``
(the provider edge), ``kafka`` (the Kafka edge), ``lease``, ``node`` (wiring),
``records`` and ``topics`` (the bus contract), ``cli`` (entry point). See the
README's layout table.
"""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The installed distribution's version; "unknown" in a tree never installed."""
    try:
        return metadata.version("knowlarity-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"
