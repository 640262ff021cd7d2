"""Log set-up for the entry point: one line per event, call id in the fields."""

from __future__ import annotations

import logging
import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)


def start_logging(fmt: str = "text", level: str = "info") -> None:
    """Twisted's logger for the node's own events; stdlib logging (aiokafka) to stderr."""
    observer = jsonFileLogObserver(sys.stdout) if fmt == "json" else textFileLogObserver(sys.stdout)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
