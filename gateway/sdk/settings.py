"""What every bot built on the SDK is configured with, declared once for all of them."""

from __future__ import annotations

from dataclasses import dataclass

from gateway import topics
from gateway.kafka_access import ACCESS_SETTINGS, KafkaAccess
from gateway.sdk.calls import Limits
from gateway.settings import (
    DEFAULT_KAFKA,
    DEFAULT_TOPIC_PREFIX,
    KAFKA,
    LOG_FORMAT,
    LOG_FORMATS,
    LOG_LEVEL,
    TOPIC_PREFIX,
    Setting,
    boolean,
    nested,
    non_negative,
    positive,
    with_defaults,
)


def _group_id(text: str) -> str:
    if not text.strip():
        raise ValueError("must be non-empty")
    return text.strip()


@dataclass(frozen=True)
class BotSettings:
    kafka: str = DEFAULT_KAFKA
    kafka_access: KafkaAccess = KafkaAccess()
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    group_id: str = "knowlarity-bot"
    # With no committed offset: the oldest record instead of the newest.
    from_beginning: bool = False
    commit_interval_s: float = 1.0
    log_format: str = LOG_FORMATS[0]
    log_level: str = "info"
    limits: Limits = Limits()

    @property
    def inbound_topic(self) -> str:
        return topics.inbound_topic(self.topic_prefix)

    @property
    def state_topic(self) -> str:
        return topics.state_topic(self.topic_prefix)


# Defaults from BotSettings and Limits; a bot nests these under its own config.
BOT_SETTINGS: tuple[Setting, ...] = with_defaults((
    KAFKA,
    *nested(ACCESS_SETTINGS, "kafka_access"),
    TOPIC_PREFIX,
    Setting("group_id", "KGW_BOT_GROUP", None, "consumer group id (every replica the same)",
            _group_id),
    Setting("from_beginning", "KGW_BOT_FROM_BEGINNING", None,
            "with no committed offset, start at the oldest record instead of the newest",
            boolean),
    Setting("max_backlog_s", "KGW_BOT_MAX_BACKLOG_S", None,
            "a call taken over mid-call (rebalance, restart) skips caller audio older than "
            "this and answers live audio", non_negative(float), path="limits.max_backlog_s"),
    Setting("commit_interval_s", "KGW_BOT_COMMIT_INTERVAL_S", None,
            "how often offsets of records handed to the bot are committed (the window for "
            "redelivery after a crash)", positive(float)),
    Setting("audio_queue_chunks", "KGW_BOT_AUDIO_QUEUE_CHUNKS", None,
            "caller audio chunks queued per call for a handler that reads slowly; beyond, "
            "the oldest is dropped", positive(int), path="limits.audio_chunks"),
    Setting("forget_after_s", "KGW_BOT_FORGET_AFTER_S", None,
            "forget a call with no record for this long (its end was lost)", positive(float),
            path="limits.forget_after_s"),
    LOG_FORMAT,
    LOG_LEVEL,
), BotSettings())
