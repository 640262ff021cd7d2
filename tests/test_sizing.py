"""gateway/ops/sizing.py: the benchmark's figures, and the manifests' CPU and socket caps
and alert thresholds that rely on them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_dashboard import alert_rules
from test_limits import DEPLOY, _block, _memory, _value, compose_env, config, k8s_env

from gateway.ops import limits, sizing
from gateway.ops.limits import MiB

RESULTS = Path(__file__).parent.parent / sizing.RESULTS_FILE


def _per_frame_rows() -> dict[int, list[str]]:
    """The results' echo table "one record per 20 ms frame (the default)", by calls."""
    text = RESULTS.read_text()
    heading = "## Echo workload: gateway and ceilings, one record per 20 ms frame"
    section = text.split(heading)[1].split("\n## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| calls |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in section.splitlines():
        if re.match(r"\|\s*\d+\s*\|", line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[int(cells[0])] = dict(zip(columns, cells, strict=True))
    return rows


def _cpu(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", value)
    assert m, value
    return float(m.group(1)) / (1000 if m.group(2) else 1)


def cpu_covers(cpu_cores: float, max_sockets: int) -> bool:
    """``cpu_cores`` carry ``max_sockets`` calls at the measured cost, within the measured load."""
    usable_ms = min(cpu_cores, sizing.USABLE_CORES_PER_NODE) * 1000
    return (usable_ms / max_sockets >= sizing.CPU_MS_PER_CALL_S
            and max_sockets <= sizing.MEASURED_CALLS)


# --- the figures ---------------------------------------------------------------------


def test_the_figures_are_the_results_files() -> None:
    """Regenerated results with other figures fail here: update gateway/ops/sizing.py (and
    the manifests' arithmetic) with them."""
    row = _per_frame_rows()[sizing.MEASURED_CALLS]
    assert float(row["gateway ms CPU per call-s"]) == sizing.CPU_MS_PER_CALL_S
    assert float(row["RSS KB per call"]) == sizing.RSS_KB_PER_CALL
    assert f"idle {sizing.IDLE_RSS_KB} KB" in RESULTS.read_text()


def test_the_measured_load_is_the_largest_without_loss() -> None:
    rows = _per_frame_rows()
    assert int(rows[sizing.MEASURED_CALLS]["frames lost"]) == 0
    assert all(int(r["frames lost"]) > 0 for n, r in rows.items() if n > sizing.MEASURED_CALLS)


@pytest.mark.parametrize(("cores", "sockets", "ok"), [
    (1.0, 100, True),   # 100 x 8.46 = 846 ms/s
    (1.0, 110, False),  # 110 x 8.46 = 931 ms/s fits a core, but beyond the load measured
    (0.5, 59, True),    # 59 x 8.46 = 499 ms/s
    (0.5, 60, False),   # 60 x 8.46 = 508 ms/s
    (1.0, 200, False),
    (2.0, 150, False),  # a second core is not used by one Python thread
])
def test_cpu_covers(cores: float, sockets: int, ok: bool) -> None:
    assert cpu_covers(cores, sockets) is ok
    assert (sockets <= sizing.max_calls(cores)) is ok


def test_replicas_for_a_peak_keep_one_spare() -> None:
    assert sizing.nodes_for(200) == 3 and sizing.nodes_for(201) == 4


# --- the manifests ---------------------------------------------------------------------


def _k8s_resources() -> str:
    sts = (DEPLOY / "k8s" / "gateway-statefulset.yaml").read_text()
    return "\n".join(_block(sts, "          resources:"))


def _k8s_config(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    return config(k8s_env(token))


def test_k8s_cpu_covers_its_socket_cap(tmp_path: Path) -> None:
    c = _k8s_config(tmp_path)
    resources = _k8s_resources()
    limit = _cpu(_value(re.search(r"limits:\n(?:.*\n)*?\s+cpu: (.*)", resources)[1]))
    request = _cpu(_value(re.search(r"requests:\n(?:.*\n)*?\s+cpu: (.*)", resources)[1]))
    assert request == limit  # Guaranteed QoS: the node gets the core it is sized on
    assert cpu_covers(limit, c.max_sockets), (limit, c.max_sockets)
    sts = (DEPLOY / "k8s" / "gateway-statefulset.yaml").read_text()
    assert f"{c.max_sockets} x {sizing.CPU_MS_PER_CALL_S}" in sts  # the arithmetic is shown


def test_k8s_memory_covers_what_calls_really_use(tmp_path: Path) -> None:
    c = _k8s_config(tmp_path)
    limit = _memory(_value(re.search(r"limits:\n(?:.*\n)*?\s+memory: (.*)", _k8s_resources())[1]))
    assert sizing.expected_rss_bytes(c.max_sockets) < limits.per_node(c).total <= limit


def test_compose_cpu_covers_its_socket_cap() -> None:
    c = config(compose_env())
    text = (DEPLOY / "compose.yaml").read_text()
    cpus = float(_value(re.search(r"^\s+cpus: (.*)$", text, re.M)[1]))
    assert cpu_covers(cpus, c.max_sockets), (cpus, c.max_sockets)
    assert f"{c.max_sockets} x {sizing.CPU_MS_PER_CALL_S}" in text


# --- alert thresholds that mirror the manifests ----------------------------------------


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)([smh])", duration)
    assert m, duration
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def test_memory_alert_names_the_k8s_limit() -> None:
    limit = _memory(_value(re.search(r"limits:\n(?:.*\n)*?\s+memory: (.*)", _k8s_resources())[1]))
    expr = alert_rules()["KgwMemoryNearLimit"]["expr"]
    assert f"{limit // MiB} * 1024 * 1024" in expr, expr


def test_buffer_alert_names_the_k8s_buffer(tmp_path: Path) -> None:
    c = _k8s_config(tmp_path)
    expr = alert_rules()["KgwBufferFilling"]["expr"]
    assert f"{c.buffer_bytes // MiB} * 1024 * 1024" in expr, expr


def test_kafka_down_fires_before_the_buffer_overflows_at_the_cap(tmp_path: Path) -> None:
    """With bots talking all the time the buffer fills fastest; the alert must fire first."""
    c = _k8s_config(tmp_path)
    carried = limits.outage_carried_s(c, c.max_sockets, talking_bots=True)
    assert _seconds(alert_rules()["KgwKafkaDown"]["for"]) < carried
    assert f"{carried:.1f} s" in alert_rules()["KgwKafkaDown"]["comment"]
