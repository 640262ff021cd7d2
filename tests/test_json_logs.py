"""``--log-format json``: one JSON object a line, from every logger, with call and node ids."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from gateway.bot.echo import EchoBotSettings
from gateway.ops.logs import (
    JsonFormatter,
    event_as_json,
    json_observer,
    stdlib_handler,
    text_observer,
)
from gateway.settings import SettingError

NODE_ID = "jsonlog1"
PATH = "/vaani/knowlarity/setup-call-streams"
# Every character a line splitter might break on, and the record separator
# Twisted's own JSON format put before each record.
TRICKY = "a\nb\rc\x1ed\x85e\u2028f\u2029g\x00h\x7f"


def parse_line(line: str) -> dict[str, Any]:
    """One log line as the shipper reads it; fails unless it has the fields every line has."""
    record = json.loads(line)
    assert isinstance(record, dict), line
    assert isinstance(record["level"], str), line
    assert isinstance(record["message"], str), line
    when = datetime.fromisoformat(record["time"])
    assert when.utcoffset() == timedelta(0), line
    return record


def one_line(text: str) -> dict[str, Any]:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    assert text.isascii(), repr(text)
    (line,) = text.splitlines()  # str.splitlines breaks on \x1e, \x85, \u2028 too
    return parse_line(line)


# --- the formatters --------------------------------------------------------------


def captured_twisted_event(emit: Any) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    emit(Logger(namespace="gateway.test", observer=LogPublisher(events.append)))
    (event,) = events
    return event


def test_twisted_event_with_a_failure_is_one_line_with_the_traceback_as_a_field() -> None:
    """A Twisted failure event is one JSON line: rendered message, plain level, traceback field."""
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    event = captured_twisted_event(
        lambda log: log.failure("call {call_id}: handler failed", failure=failure, call_id="c-1"))
    record = one_line(event_as_json(event, node_id=NODE_ID) or "")
    assert record["message"] == "call c-1: handler failed"
    assert record["level"] == "critical"
    assert record["logger"] == "gateway.test"
    assert record["call_id"] == "c-1"
    assert record["node_id"] == NODE_ID
    assert "ZeroDivisionError" in record["traceback"]
    assert abs(datetime.fromisoformat(record["time"]).timestamp() - event["log_time"]) < 1e-3


@pytest.mark.parametrize(("level", "name"), [
    (LogLevel.debug, "debug"), (LogLevel.info, "info"), (LogLevel.warn, "warning"),
    (LogLevel.error, "error"), (LogLevel.critical, "critical")])
def test_twisted_levels_are_plain_strings(level: LogLevel, name: str) -> None:
    """Twisted's level constants become the same plain names stdlib records get."""
    event = captured_twisted_event(lambda log: log.emit(level, "x"))
    assert one_line(event_as_json(event) or "")["level"] == name


def test_line_about_another_node_keeps_the_writer_as_node_id() -> None:
    """A line naming a peer node keeps ``node_id`` for the writer and the peer apart."""
    event = captured_twisted_event(lambda log: log.warn("node {node_id} lease expired",
                                                       node_id="other"))
    assert one_line(event_as_json(event) or "")["node_id"] == "other"
    record = one_line(event_as_json(event, node_id=NODE_ID) or "")
    assert (record["node_id"], record["peer_node_id"]) == (NODE_ID, "other")


def test_event_that_renders_to_nothing_is_not_written() -> None:
    """An event with no format and no failure writes nothing, as in the text format."""
    assert event_as_json({"log_level": LogLevel.info, "log_time": time.time()}) is None


def test_control_characters_stay_inside_one_line() -> None:
    """Control characters and line separators in a message and a field stay in one line."""
    event = captured_twisted_event(
        lambda log: log.warn("call {call_id}: {why}", call_id=TRICKY, why=TRICKY))
    record = one_line(event_as_json(event, node_id=NODE_ID) or "")
    assert record["message"] == f"call {TRICKY}: {TRICKY}"
    assert record["call_id"] == TRICKY
    out = io.StringIO()
    logger = logging.getLogger("test_json_logs.tricky")
    logger.addHandler(stdlib_handler("json", out))
    logger.propagate = False
    try:
        logger.warning("why %s", TRICKY, extra={"call_id": TRICKY})
    finally:
        logger.handlers.clear()
    record = one_line(out.getvalue())
    assert (record["message"], record["call_id"]) == (f"why {TRICKY}", TRICKY)


def test_text_format_still_escapes_a_forged_line() -> None:
    """The text format is unchanged: an event with a newline is still one escaped line."""
    out = io.StringIO()
    event = captured_twisted_event(lambda log: log.warn("path {p}", p="/x\nFAKE line"))
    text_observer(out)(event)
    assert out.getvalue().count("\n") == 1
    assert "path /x\\n" in out.getvalue() and "FAKE line" in out.getvalue()


def test_stdlib_record_has_the_same_shape_with_ids_from_extra() -> None:
    """A stdlib record, exception and all, is one line with call_id / node_id from ``extra``."""
    try:
        raise KeyError("k")
    except KeyError:
        record = logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "lost %s",
                                   ("conn",), sys.exc_info())
    record.call_id = "c-2"
    parsed = one_line(JsonFormatter(node_id=NODE_ID).format(record) + "\n")
    assert parsed["message"] == "lost conn"
    assert parsed["level"] == "error"
    assert parsed["logger"] == "aiokafka.conn"
    assert (parsed["call_id"], parsed["node_id"]) == ("c-2", NODE_ID)
    assert "KeyError" in parsed["traceback"]
    bare = one_line(JsonFormatter().format(logging.LogRecord(
        "asyncio", logging.WARNING, __file__, 1, "slow", None, None)) + "\n")
    assert "call_id" not in bare and "node_id" not in bare and "traceback" not in bare


def test_json_observer_writes_one_line_per_event() -> None:
    """The Twisted observer writes exactly the formatter's line per event."""
    out = io.StringIO()
    log = Logger(namespace="gateway.test", observer=json_observer(out, NODE_ID))
    log.info("one")
    log.info("two")
    assert [parse_line(x)["message"] for x in out.getvalue().splitlines()] == ["one", "two"]


@pytest.mark.parametrize(("given", "ok"), [("text", True), ("json", True), ("yaml", False)])
def test_bot_log_format_setting(given: str, ok: bool) -> None:
    """The echo bot takes --log-format text|json, and a bad value names the setting."""
    if ok:
        assert EchoBotSettings.from_args(None, {"KGW_LOG_FORMAT": given}).bot.log_format == given
    else:
        with pytest.raises(SettingError, match="KGW_LOG_FORMAT"):
            EchoBotSettings.from_args(None, {"KGW_LOG_FORMAT": given})


# --- a node through a call and a refused socket --------------------------------------


@dataclass(frozen=True)
class NodeRun:
    call_id: str
    stdout: list[str]
    stderr: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused_handshake(port: int) -> bytes:
    """A WebSocket upgrade to a path the node does not serve; returns the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /not-a-gateway-path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        return s.recv(4096).split(b"\r\n", 1)[0]


@pytest.fixture(scope="module")
def node_run(kafka_bootstrap: str) -> Iterator[NodeRun]:
    port = free_port()
    prefix = "t" + uuid.uuid4().hex[:12]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--log-format", "json",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--kafka", kafka_bootstrap,
         "--node-id", NODE_ID, "--topic-prefix", prefix, "--metrics-listen", "",
         "--inbound-partitions", "3", "--drain-timeout-s", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    listening = threading.Event()

    def read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            if "listening on" in line:
                listening.set()

    readers = [threading.Thread(target=read, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, err), daemon=True)]
    for t in readers:
        t.start()
    try:
        assert listening.wait(90), f"node never listened: {''.join(out + err)[-3000:]}"
        sim = subprocess.run(
            [sys.executable, "-m", "gateway.simulator", "--url", f"ws://127.0.0.1:{port}{PATH}",
             "--seconds", "2", "--linger-s", "0", "--json"],
            capture_output=True, text=True, timeout=60)
        assert sim.stdout.strip(), f"simulator printed nothing: {sim.stderr[-2000:]}"
        (call,) = json.loads(sim.stdout.strip().splitlines()[-1])["calls"]
        assert b" 404 " in refused_handshake(port) + b" "
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(10)
    assert proc.returncode == 0, "".join(out + err)[-3000:]
    yield NodeRun(call["call_id"], out, err)


@pytest.mark.broker
def test_every_line_of_the_node_is_a_json_record(node_run: NodeRun) -> None:
    """Every line the node writes, on stdout and stderr, is a JSON object with time, level
    and message, and the refused socket is among them."""
    lines = node_run.stdout + node_run.stderr
    records = [parse_line(line) for line in lines]
    assert len(records) == len(lines) > 3
    assert any("refused socket" in r["message"] and "/not-a-gateway-path" in r["message"]
               and r["level"] == "warning" for r in records), lines


@pytest.mark.broker
def test_every_line_about_the_call_carries_its_id(node_run: NodeRun) -> None:
    """A line whose message names the call has ``call_id`` equal to it, and there are such."""
    about = [r for r in map(parse_line, node_run.stdout + node_run.stderr)
             if node_run.call_id in r["message"]]
    assert len(about) >= 2, node_run.stdout  # started, ended
    wrong = [r for r in about if r.get("call_id") != node_run.call_id]
    assert not wrong, "\n".join(map(json.dumps, wrong))


@pytest.mark.broker
def test_every_line_of_the_node_names_the_node(node_run: NodeRun) -> None:
    """``node_id`` is on every line the node writes, Twisted's own and aiokafka's included."""
    records = [parse_line(line) for line in node_run.stdout + node_run.stderr]
    unnamed = [r for r in records if r.get("node_id") != NODE_ID]
    assert not unnamed, "\n".join(map(json.dumps, unnamed))
