"""gateway/ops/limits.py: the worst-case memory formula, and the manifests that rely on it."""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import aiokafka
import pytest
from twisted.internet.abstract import FileDescriptor

from gateway.config import NODE_SETTINGS, NodeConfig, add_node_arguments
from gateway.ops import limits
from gateway.ops.limits import KiB, MiB

DEPLOY = Path(__file__).parent.parent / "deploy"


def config(env: Mapping[str, str]) -> NodeConfig:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return NodeConfig.from_args(parser.parse_args([]), dict(env))


# --- the formula ---------------------------------------------------------------

D = NodeConfig()
SOCKET = sum(t.bytes for t in limits.socket_terms(D))


@pytest.mark.parametrize(("env", "term", "expected"), [
    ({}, "receive", 2 * 196608),
    ({"KGW_MAX_FRAME_BYTES": "1000"}, "receive", 2000),
    # max_marks marks of the longest name, and the one transfer a call may have queued.
    ({}, "marks", 256 * (256 + 128 + 64) + 256 + 16 * (2 * (128 + 64) + 64)),
    ({"KGW_MAX_MARKS": "10", "KGW_MAX_TRANSFER_PARAMS": "1", "KGW_MAX_NAME_CHARS": "36"},
     "marks", 10 * (256 + 36 + 64) + 256 + (2 * 100 + 64)),
    ({}, "call overhead", 64 * KiB),
])
def test_socket_terms(env: dict[str, str], term: str, expected: int) -> None:
    terms = {t.name: t.bytes for t in limits.socket_terms(config(env))}
    assert terms[term] == expected


@pytest.mark.parametrize(("env", "expected"), [
    ({}, 262144 + 64 * KiB),
    ({"KGW_MAX_WRITE_BUFFER_BYTES": "1048576"}, 1048576 + 64 * KiB),
])
def test_send_term_is_write_bound_plus_twisted_plus_one_frame(env: dict[str, str],
                                                             expected: int) -> None:
    send = {t.name: t.bytes for t in limits.socket_terms(config(env))}["send"]
    frame = send - expected
    # One playAudio frame of playout_clip_ms (200 ms) at 48 kHz as base64 WAV.
    assert 200 * 48 * 2 * 4 // 3 < frame < 200 * 48 * 2 * 4 // 3 + 200


@pytest.mark.parametrize(("env", "term", "expected"), [
    ({}, "base", 128 * MiB),
    # Records are charged their overhead by the outbox itself: the bound is the memory.
    ({}, "record buffer", 64 * MiB),
    ({"KGW_BUFFER_BYTES": str(8 * MiB), "KGW_BUFFER_CALL_SHARE_BYTES": str(MiB)},
     "record buffer", 8 * MiB),
    ({}, "producer batches", 24 * 2 * 256 * KiB),
    ({"KGW_BUFFER_BYTES": str(4 * MiB), "KGW_BUFFER_CALL_SHARE_BYTES": str(MiB)},
     "producer batches", 4 * MiB),
    ({}, "bot audio", 96 * MiB),
    ({"KGW_MAX_SOCKETS": "10"}, "bot audio", 10 * 2 * MiB),
    ({}, "sockets", 200 * SOCKET),
    ({"KGW_MAX_SOCKETS": "3"}, "sockets", 3 * SOCKET),
    ({}, "handshakes", 50 * (16384 + 16 * KiB)),
    ({}, "command fetch", 3 * MiB),
])
def test_node_terms(env: dict[str, str], term: str, expected: int) -> None:
    assert limits.per_node(config(env)).term(term).bytes == expected


def test_aggregation_adds_a_term_per_socket() -> None:
    assert "aggregation" not in {t.name for t in limits.socket_terms(D)}
    c = config({"KGW_AGGREGATE_MS": "100"})
    held = {t.name: t.bytes for t in limits.socket_terms(c)}["aggregation"]
    assert held == 100 * 96 + 196608


def test_per_call_is_its_socket_its_audio_and_its_share() -> None:
    call = limits.per_call(D)
    assert call.total == SOCKET + 2 * MiB + 4 * MiB
    assert call.total < limits.per_node(D).total


def test_node_total_is_the_sum_and_grows_with_every_bound() -> None:
    base = limits.per_node(D)
    assert base.total == sum(t.bytes for t in base.terms)
    for env in ({"KGW_MAX_SOCKETS": "201"}, {"KGW_BUFFER_BYTES": str(65 * MiB)},
                {"KGW_MAX_FRAME_BYTES": "200000"}, {"KGW_MAX_MARKS": "257"},
                {"KGW_MAX_WRITE_BUFFER_BYTES": "300000"}, {"KGW_PLAYOUT_NODE_BYTES": str(97 * MiB)},
                {"KGW_MAX_AWAITING_START": "51"}, {"KGW_MAX_REQUEST_BYTES": "20000"}):
        assert limits.per_node(config(env)).total > base.total, env


def test_the_defaults_figure() -> None:
    """The figure the README states; a change here is a change to document."""
    assert round(limits.per_node(D).total / MiB, 1) == 482.8
    assert round(limits.per_call(D).total / MiB, 1) == 6.9


def test_the_outage_figure_counts_the_headers_of_every_inbound_record() -> None:
    """Each caller record is charged the call's headers: a longer node id (in the reply
    topic and in kgw-node-id) costs the buffer more per call-second; bot audio has none."""
    base = limits.call_buffer_bytes_per_s(D)
    inbound_type = len("kgw-type") + len("knowlarity.gateway.v1.InboundRecord")
    outbound_type = len("kgw-type") + len("knowlarity.gateway.v1.OutboundRecord")
    schema = len("kgw-schema") + len("1")
    assert base == 50 * (640 + 70 + 320 + inbound_type + schema + len("kgw-reply-topic")
                         + len(D.commands_topic) + len("kgw-sample-rate") + len("16000")
                         + len("kgw-node-id") + len(D.node_id))
    longer = replace(D, node_id="n" * 40)
    assert limits.call_buffer_bytes_per_s(longer) - base == 50 * 2 * (40 - len(D.node_id))
    assert limits.outage_carried_s(longer, 100) < limits.outage_carried_s(D, 100)
    assert limits.call_buffer_bytes_per_s(D, talking_bot=True) == base + 50 * (
        640 + 70 + 320 + outbound_type + schema)


def test_every_term_names_its_formula() -> None:
    for est in (limits.per_node(D), limits.per_call(D)):
        for t in est.terms:
            assert t.formula and t.bytes > 0, t


def test_the_constants_match_the_libraries() -> None:
    assert FileDescriptor.bufferSize == limits.TWISTED_BUFFER_BYTES
    default = inspect.signature(aiokafka.AIOKafkaConsumer).parameters["max_partition_fetch_bytes"]
    assert default.default == limits.FETCH_BYTES


def test_every_bound_setting_is_in_the_limits_table() -> None:
    """A new max_*/timeout/budget setting must say what happens beyond it and why."""
    bound = {s.name for s in NODE_SETTINGS
             if re.search(r"max_|_bytes$|_timeout_s$|_burst|_per_s$", s.name)
             and s.name != "drain_timeout_s"}
    listed = {lim.setting for lim in limits.LIMITS}
    assert bound <= listed, bound - listed
    names = {s.name for s in NODE_SETTINGS}
    assert listed <= names


# --- the deploy manifests ---------------------------------------------------------


def _value(text: str) -> str:
    text = re.sub(r"\s+#.*$", "", text.strip())
    return text[1:-1] if text[:1] in "\"'" and text[-1:] == text[:1] else text


def _block(text: str, header: str) -> list[str]:
    """The lines indented under ``header`` (a line of its own)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip() == header.rstrip() or line.strip().startswith(header.strip()):
            indent = len(line) - len(line.lstrip())
            out = []
            for more in lines[i + 1:]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                out.append(more)
            return out
    raise AssertionError(f"{header!r} not found")


def _pairs(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"\s+(KGW_\w+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = _value(m.group(2))
    return out


def _memory(value: str) -> int:
    m = re.fullmatch(r"(\d+)(Mi|Gi|m|g|M|G)", value)
    assert m, value
    n, unit = int(m.group(1)), m.group(2)
    return n * {"Mi": MiB, "M": MiB, "m": MiB, "Gi": 1024 * MiB, "G": 1024 * MiB,
                "g": 1024 * MiB}[unit]


def k8s_env(token_file: Path) -> dict[str, str]:
    env = _pairs(_block((DEPLOY / "k8s" / "configmap.yaml").read_text(), "data:"))
    sts = (DEPLOY / "k8s" / "gateway-statefulset.yaml").read_text()
    for name, value in re.findall(r"- name: (KGW_\w+)\n\s+value: (.*)", sts):
        env[name] = _value(value)
    assert env["KGW_AUTH_TOKEN_FILE"].startswith("/var/run/secrets/")
    env["KGW_AUTH_TOKEN_FILE"] = str(token_file)  # the Secret, as the pod sees it
    return env


def test_k8s_memory_covers_the_worst_case(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    c = config(k8s_env(token))
    assert not c.protected_mode and c.auth_token == "s3cret"
    sts = (DEPLOY / "k8s" / "gateway-statefulset.yaml").read_text()
    resources = "\n".join(_block(sts, "          resources:"))
    limit = _memory(_value(re.search(r"limits:\n(?:.*\n)*?\s+memory: (.*)", resources)[1]))
    request = _memory(_value(re.search(r"requests:\n(?:.*\n)*?\s+memory: (.*)", resources)[1]))
    worst = limits.per_node(c).total
    assert worst <= limit, f"worst case {worst / MiB:.1f} MiB > limit {limit / MiB:.0f} MiB"
    assert request == limit or request >= worst
    # The derivation in the manifest's comment states the figure.
    assert f"{worst / MiB:.1f} MiB" in sts


def test_k8s_token_comes_from_a_mounted_secret() -> None:
    sts = (DEPLOY / "k8s" / "gateway-statefulset.yaml").read_text()
    assert "KGW_AUTH_TOKEN_FILE" in sts and "secretName: kgw-auth" in sts
    assert "name: KGW_AUTH_TOKEN\n" not in sts
    assert "KGW_ALLOW_UNAUTHENTICATED" not in sts


def compose_env() -> dict[str, str]:
    text = (DEPLOY / "compose.yaml").read_text()
    env = _pairs(_block(text, "x-gateway-env: &gateway-env"))
    for service in ("gw-1:", "gw-2:"):
        block = _block(text, f"  {service}")
        assert any("<<: *gateway-env" in line for line in block)
        env.update(_pairs(block))
    return env


def test_compose_memory_covers_the_worst_case() -> None:
    c = config(compose_env())
    text = (DEPLOY / "compose.yaml").read_text()
    limit = _memory(_value(re.search(r"^\s+mem_limit: (.*)$", text, re.M)[1]))
    worst = limits.per_node(c).total
    assert worst <= limit, f"worst case {worst / MiB:.1f} MiB > mem_limit {limit / MiB:.0f} MiB"
    assert f"{worst / MiB:.1f} MiB" in text


def test_compose_is_not_in_protected_mode_and_says_why() -> None:
    c = config(compose_env())
    assert not c.protected_mode
    text = (DEPLOY / "compose.yaml").read_text()
    # Opened on purpose, and only on the host's loopback.
    assert re.search(r"#.*\n(?:\s+#.*\n)*\s+KGW_ALLOW_UNAUTHENTICATED", text)
    for port in re.findall(r'- "([\d.:]+:8080)"', text):
        assert port.startswith("127.0.0.1:"), port
