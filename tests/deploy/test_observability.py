"""The observability files in deploy/: the collector, the dashboard and the alert rules hold together.

Every PromQL expression (dashboard and rules) may name only metrics the services really export;
`promtool check rules` must accept the rules (the Debian `prometheus` package; .ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from analytics_service.core.metrics import AnalyticsMetrics
from chat_service.core.metrics import ChatMetrics
from servicekit.admission import AdmissionMetrics
from servicekit.connections import ConnectionEvents

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "daca.json"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every scrape target


def exported_series() -> set[str]:
    """Every sample name the two services can put in /metrics (labelled families included)."""
    names: set[str] = set()
    chat = ChatMetrics(CollectorRegistry())
    AdmissionMetrics(chat.registry, prefix="chat")  # as chat_service.main makes them
    ConnectionEvents(chat.registry, prefix="chat")
    for metrics in (chat, AnalyticsMetrics(CollectorRegistry())):
        for family in metrics.registry.collect():
            if family.type == "counter":
                names |= {family.name + "_total"}
            elif family.type == "histogram":
                names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
            else:
                names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, label names and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if match.group() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", match.group()):
            continue
        names.add(match.group())
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_metric_name_parser_sees_through_promql():
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{job="x", a=~"5.."}[5m]))) > 2'
    assert metric_names(expr) == {"http_request_duration_seconds_bucket"}
    assert metric_names("sum(rate(a_total[1m])) / sum(rate(b_total[1m])) > 0.05 and up == 0") == {"a_total", "b_total", "up"}


@pytest.mark.parametrize(("source", "expressions"), [("dashboard", dashboard_expressions()), ("rules", rule_expressions())])
def test_every_query_names_a_metric_the_services_export(source, expressions):
    exported = exported_series() | PROMETHEUS_OWN
    assert expressions
    for expr in expressions:
        names = metric_names(expr)
        assert names, f"{source}: no metric in {expr!r}"
        assert names <= exported, f"{source}: {sorted(names - exported)} not exported (in {expr!r})"


def test_the_dashboard_covers_the_resilience_story():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    queried = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    for metric in (
        "chat_breaker_state",
        "chat_analytics_fallbacks_total",
        "chat_outbox_depth",
        "chat_outbox_stalled_seconds",
        "chat_llm_calls_total",
        "chat_llm_errors_total",
        "http_request_duration_seconds_bucket",
    ):
        assert metric in queried, metric
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_the_rules_alert_on_breakers_fallbacks_outbox_model_errors_and_p99():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {
        "ChatBreakerOpen",
        "ChatAnalyticsFallbackRateHigh",
        "ChatOutboxDeep",
        "ChatOutboxStalled",
        "ChatModelErrors",
        "ChatP99High",
    } <= alerts


def test_promtool_accepts_the_rules():
    if shutil.which("promtool") is None:  # a missing checker is a failure, not a silent pass: .ci/run installs it
        pytest.fail("promtool is not installed: apt-get install prometheus (Debian), as .ci/run does")
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_sends_both_services_traces_through_the_collector_to_jaeger():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for service, name in (("chat", "chat"), ("analytics", "analytics")):
        environment = compose[service]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert environment["OTEL_SERVICE_NAME"] == name
    collector = compose["otel-collector"]
    mounted = {volume.split(":")[1]: DEPLOY / volume.split(":")[0] for volume in collector["volumes"]}
    config = yaml.safe_load(mounted["/etc/otelcol/config.yaml"].read_text())
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and set(pipeline["processors"]) <= set(config["processors"])
    (exporter,) = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317" and "jaeger" in compose
    for volume in compose["prometheus"]["volumes"] + compose["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in prometheus["scrape_configs"]} == {"chat", "analytics"}
