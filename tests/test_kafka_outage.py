"""A broker outage during a call: the call goes on, and every lost record is reported."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import pytest
from test_end_to_end import in_twisted, node_config, reading, running_node, simulate, url_of
from test_faults import own_kafka

from gateway.core import model as m
from gateway.localkafka import LocalKafka
from gateway.records import end_reason
from gateway.testing import InboundReader

pytestmark = pytest.mark.broker


@in_twisted
async def test_outage_keeps_the_call_and_reports_dropped_records(
        own_kafka: LocalKafka, topic_prefix: str) -> None:
    """While the broker is frozen the call continues; records beyond the node's buffer are
    dropped oldest-first and a RecordsDropped record covers exactly the missing sequence
    numbers, the rest arrive in order, and the call still ends once."""
    kafka = own_kafka
    config = replace(node_config(kafka.bootstrap, topic_prefix), buffer_bytes=40_000)
    async with running_node(config) as node:
        sim = asyncio.ensure_future(simulate(url_of(node), ["--seconds", "12", "--linger-s", "0"]))
        await asyncio.sleep(3)
        os.kill(kafka.pid, signal.SIGSTOP)
        await asyncio.sleep(6)
        os.kill(kafka.pid, signal.SIGCONT)
        result = await sim
        (call,) = result["calls"]
        assert call["ended"] == "caller_hangup"
        dropped_metric = node.metrics.records_dropped.labels("buffer_full")._value.get()
        assert dropped_metric > 0, "the outage was long enough to overflow a 40 kB buffer"

    async with reading(InboundReader(kafka.bootstrap, topic_prefix)) as inbound:
        call_id = call["call_id"]
        await inbound.wait_for(lambda r: r.ended(call_id) is not None, timeout=60)
        recs = inbound.by_call[call_id]
        drops = [r.dropped for r in recs if r.WhichOneof("body") == "dropped"]
        delivered = {r.record_seq for r in recs if r.WhichOneof("body") != "dropped"}
        reported = {s for d in drops for s in range(d.first_record_seq, d.last_record_seq + 1)}
        last = recs[-1].record_seq
        assert end_reason(recs[-1]) is m.EndReason.CALLER_HANGUP
        assert sum(d.records for d in drops) == dropped_metric
        # Every sequence number is either delivered or reported lost, never both.
        assert delivered | reported == set(range(last + 1))
        assert not delivered & reported
        # Delivered records keep their order.
        seqs = [r.record_seq for r in recs if r.WhichOneof("body") != "dropped"]
        assert seqs == sorted(seqs)


__all__ = ["own_kafka"]  # the shared fixture, used by name
