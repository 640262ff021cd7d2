"""deploy/grafana and deploy/prometheus: every PromQL expression parses and names only
metrics a node's registry exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.ops.metrics import Metrics

DEPLOY = Path(__file__).parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "kgw-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"

# Series Prometheus itself adds to every scrape target, not the node's.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# --- a small PromQL reader: enough to find metric names and reject broken syntax --------

FUNCTIONS = frozenset({
    # aggregations
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "delta", "deriv", "exp", "floor", "histogram_quantile", "idelta", "increase", "irate",
    "label_replace", "label_join", "ln", "log2", "log10", "predict_linear", "rate", "resets",
    "round", "scalar", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "last_over_time",
})
# Followed by a parenthesised list of label names, not an expression.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left",
                                 "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w:]))
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+|\$__\w+)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=,:])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
""", re.X)

_PAIRS = {"(": ")", "{": "}", "[": "]"}


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "space":
            yield m.lastgroup or "", m.group()


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects; ValueError when it does not parse."""
    toks = list(_tokens(expr))
    if not toks:
        raise ValueError("empty expression")
    names: set[str] = set()
    stack: list[str] = []
    skip_label_list = False
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        inside = stack[-1] if stack else ""
        if kind == "open":
            if skip_label_list and text != "(":
                raise ValueError(f"label list expected after by/on/... in {expr!r}")
            stack.append("labels" if skip_label_list else text)
            skip_label_list = False
            continue
        if kind == "close":
            if not stack:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
            opened = stack.pop()
            if _PAIRS.get("(" if opened == "labels" else opened) != text:
                raise ValueError(f"{opened!r} closed by {text!r} in {expr!r}")
            continue
        if inside in ("{", "[", "labels"):
            continue  # label matchers, ranges, label lists: no metric names there
        prev = toks[i - 1][1] if i else ""
        if (kind == "duration" and prev != "offset") or (kind == "string" and inside != "("):
            raise ValueError(f"unexpected {text!r} in {expr!r}")
        if kind != "name":
            continue
        if text in LABEL_LIST_KEYWORDS:
            skip_label_list = True
            if nxt != "(":
                raise ValueError(f"{text} without a label list in {expr!r}")
        elif nxt == "(" or nxt in ("by", "without"):  # sum by (le) (...)
            if text not in FUNCTIONS:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
        elif text.lower() not in KEYWORDS:
            names.add(text)
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")
    return names


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exposes, including those of labelled metrics that
    have no child yet (they expose nothing until their first labels())."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                 "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    out: set[str] = set()
    for family in registry.collect():
        out.update(family.name + s for s in suffixes.get(family.type, ("",)))
        out.update(s.name for s in family.samples)
    return out


def unknown_names(exprs: Iterable[str], exported: set[str]) -> dict[str, set[str]]:
    """Each expression that names a series not in ``exported``, with those names."""
    bad = {}
    for expr in exprs:
        missing = metric_names(expr) - exported - PROMETHEUS_OWN
        if missing:
            bad[expr] = missing
    return bad


# --- the files -----------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard()["panels"]) for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((?:(.+),\s*)?\w+\)", q)
            assert m, q
            if m.group(1):
                exprs.append(m.group(1))
    return exprs


def _scalar(text: str) -> str:
    text = text.strip()
    if text[:1] in "\"'" and text[-1:] == text[:1]:
        return text[1:-1]
    return re.sub(r"\s+#.*$", "", text)


def alert_rules(text: str | None = None) -> dict[str, dict[str, str]]:
    """name -> {"expr", "for", "comment"} of every ``- alert:`` in alerts.yaml (one-line
    exprs; PyYAML is not a dependency)."""
    lines = (ALERTS.read_text() if text is None else text).splitlines()
    rules: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for i, line in enumerate(lines):
        m = re.match(r"\s+- alert: (\S+)\s*$", line)
        if m:
            comment = []
            for before in reversed(lines[:i]):
                if not before.strip().startswith("#"):
                    break
                comment.insert(0, before.strip().lstrip("# "))
            current = rules[m.group(1)] = {"comment": " ".join(comment)}
            continue
        m = re.match(r"\s+(expr|for): (.+)$", line)
        if m and current is not None:
            assert m.group(2).strip() not in ("|", ">", "|-", ">-"), "keep exprs on one line"
            current[m.group(1)] = _scalar(m.group(2))
    return rules


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_names(Metrics().registry)


# --- the reader itself ---------------------------------------------------------------


@pytest.mark.parametrize(("expr", "names"), [
    ("kgw_live_calls", {"kgw_live_calls"}),
    ('sum by (reason) (rate(kgw_calls_ended_total{instance=~"$instance"}[$__rate_interval]))',
     {"kgw_calls_ended_total"}),
    ("histogram_quantile(0.95, sum by (instance, le) (rate(kgw_turn_latency_seconds_bucket"
     "[10m]))) > 1", {"kgw_turn_latency_seconds_bucket"}),
    ("max by (instance) (kgw_live_calls) / max by (instance) (kgw_max_sockets) > 0.9",
     {"kgw_live_calls", "kgw_max_sockets"}),
    ("process_resident_memory_bytes > 0.9 * 384 * 1024 * 1024 and on (instance) up == 1",
     {"process_resident_memory_bytes", "up"}),
    ("rate(a_total[5m] offset 1h) > bool 1e3", {"a_total"}),
    ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
])
def test_metric_names_are_found_and_labels_functions_keywords_are_not(
        expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", [
    "", "rate(kgw_frames_in_total[5m]", "sum(kgw_live_calls))", "kgw_live_calls{a=\"b\"",
    "rate(kgw_x[5m)]", "sum by instance (kgw_live_calls)", "ratte(kgw_frames_in_total[5m])",
    "kgw_live_calls @@ 1",
])
def test_broken_promql_is_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        metric_names(expr)


def test_exported_names_cover_unlabelled_children_and_suffixes() -> None:
    """A labelled counter with no child still exports name_total; histograms their
    _bucket/_sum/_count; a name with none of those suffixes is not exported."""
    r = CollectorRegistry()
    Counter("c", "", ["why"], registry=r)
    Histogram("h_seconds", "", registry=r)
    Gauge("g", "", registry=r)
    names = exported_names(r)
    assert {"c_total", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "g"} <= names
    assert not {"c", "h_seconds"} & names


def test_an_unknown_metric_fails_the_check(exported: set[str]) -> None:
    """The check this file applies to the dashboard and alerts can fail: a misspelt
    name, a counter without _total, a renamed metric."""
    exprs = ["sum(rate(kgw_frames_in_total[5m]))", "rate(kgw_calls_started[5m])",
             "rate(kgw_bytes_in_total[5m])", "kgw_nope"]
    assert unknown_names(exprs, exported) == {
        "rate(kgw_calls_started[5m])": {"kgw_calls_started"},
        "rate(kgw_bytes_in_total[5m])": {"kgw_bytes_in_total"},
        "kgw_nope": {"kgw_nope"},
    }


def test_alert_rules_reader_reads_name_expr_for_and_comment() -> None:
    text = ("groups:\n  - rules:\n      # why 5\n      # and more\n      - alert: A\n"
            "        expr: x > 5  # trailing\n        for: 1m\n      - alert: B\n"
            "        expr: 'y == 0'\n")
    assert alert_rules(text) == {"A": {"comment": "why 5 and more", "expr": "x > 5",
                                       "for": "1m"},
                                 "B": {"comment": "", "expr": "y == 0"}}


# --- the dashboard and the alerts ------------------------------------------------------


def test_registry_exports_the_platform_and_process_collectors(exported: set[str]) -> None:
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
            "kgw_build_info"} <= exported


def test_every_dashboard_expression_names_exported_metrics(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    assert unknown_names(exprs, exported) == {}


def test_every_alert_expression_names_exported_metrics(exported: set[str]) -> None:
    rules = alert_rules()
    assert all("expr" in r for r in rules.values()), rules
    assert unknown_names([r["expr"] for r in rules.values()], exported) == {}


def test_every_alert_says_where_its_number_comes_from() -> None:
    for name, rule in alert_rules().items():
        assert len(rule["comment"]) > 40, name


@pytest.mark.parametrize("name", [
    "KgwKafkaDown", "KgwRecordsDropped", "KgwEventLoopLagHigh", "KgwTurnLatencyHigh",
    "KgwCallsNearSocketCap", "KgwMemoryNearLimit",
])
def test_the_required_alerts_exist(name: str) -> None:
    assert name in alert_rules()


@pytest.mark.parametrize("metric", [
    "kgw_live_calls", "kgw_calls_started_total", "kgw_calls_ended_total",
    "kgw_turn_latency_seconds_bucket", "kgw_frames_in_total", "kgw_frames_out_total",
    "kgw_kafka_up", "kgw_produce_latency_seconds_bucket", "kgw_records_dropped_total",
    "kgw_buffer_bytes", "kgw_event_loop_lag_seconds_bucket", "process_cpu_seconds_total",
    "process_resident_memory_bytes", "kgw_commands_total",
])
def test_the_dashboard_shows(metric: str) -> None:
    assert any(metric in metric_names(e) for e in dashboard_exprs())


def test_the_dashboard_panels_have_distinct_ids_and_a_datasource() -> None:
    panels = list(_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
