"""Dashboards and alerts (deploy/observability/) checked by the real tool and against what the services export.

- ``promtool check rules`` / ``promtool test rules`` (the alerts' unit tests in
  alerts.test.yml) / ``promtool check config``: Debian's ``prometheus`` package,
  which ``make test`` installs when promtool is missing;
- every metric the rules and the Grafana dashboard query, and every label they
  select or group by, is one that ``serving/metrics.py`` exports (in its real
  exposition format) or one Prometheus adds (``job``, ``instance``, ``up``);
- the compose profiles point at the services and ports the stack really has.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving import metrics

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "recsys.json"
# Added by Prometheus to every scraped series, or produced by it.
PROMETHEUS_LABELS = {"job", "instance"}
PROMETHEUS_METRICS = {"up"}


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: `apt-get install -y prometheus` (make test does it)")
    result = subprocess.run([tool, *args], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_rules():
    output = promtool("check", "rules", RULES.name)
    assert "SUCCESS: 4 rules found" in output


def test_promtool_unit_tests_of_the_alerts_pass():
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_promtool_checks_the_scrape_config():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


# ---------------------------------------------------------------- metric names


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from the real exposition of serving.metrics with one child per metric."""
    registry = prometheus_client.CollectorRegistry()
    for metric in vars(metrics).values():
        if isinstance(metric, prometheus_client.metrics.MetricWrapperBase):
            # A fresh twin of each metric (same name, type, labels) so the process-wide one stays untouched.
            kind = type(metric)
            kwargs = {"buckets": metric._upper_bounds} if kind is prometheus_client.Histogram else {}
            twin = kind(metric._name, metric._documentation, metric._labelnames, registry=registry, **kwargs)
            child = twin.labels(*["x"] * len(metric._labelnames))
            (child.observe if kind is prometheus_client.Histogram else child.inc)(1)
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and dashboard query."""
    found = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
KEYWORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "on", "and", "or",
    "unless", "without", "ignoring", "group_left", "group_right", "bool", "offset",
}


def metric_references(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names its selector uses) for each metric in a PromQL expression."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_grouping = GROUPING.sub("", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    refs = []
    for name, selector in SELECTOR.findall(without_ranges):
        if name in KEYWORDS or name.startswith("__") or (not selector and "_" not in name and name != "up"):
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector))
        refs.append((name, labels))
    return refs


def test_the_parser_finds_what_it_should():
    refs = metric_references('sum by (job) (rate(recsys_x_total{method!~"/a", code="OK"}[5m])) / up{job="a"}')
    assert refs == [("recsys_x_total", {"method", "code"}), ("up", {"job"})]


def test_every_queried_metric_and_label_is_exported():
    samples = exported()
    assert "recsys_grpc_requests_total" in samples and "recsys_grpc_request_seconds_bucket" in samples
    all_labels = set().union(*samples.values()) | PROMETHEUS_LABELS
    problems = []
    checked = 0
    for where, expr in queries():
        refs = metric_references(expr)
        assert refs, f"{where}: no metric found in {expr!r}"
        for name, labels in refs:
            checked += 1
            if name in PROMETHEUS_METRICS:
                continue
            if name not in samples:
                problems.append(f"{where}: {name} is not exported (serving/metrics.py)")
            elif unknown := labels - samples[name] - PROMETHEUS_LABELS:
                problems.append(f"{where}: {name} has no label {sorted(unknown)}")
        for group in GROUPING.findall(expr):
            unknown = {label.strip() for label in group.split(",") if label.strip()} - all_labels
            if unknown:
                problems.append(f"{where}: groups by unknown labels {sorted(unknown)}")
    assert checked >= 15
    assert not problems, "\n".join(problems)


def test_dashboard_shows_what_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needed in ("recsys_grpc_requests_total", "histogram_quantile(0.5", "histogram_quantile(0.99",
                   "recsys_batch_size", "recsys_model_version", "recsys_index_items"):
        assert needed in exprs, needed
    assert all(p["title"] and p["description"] for p in dashboard["panels"])
    datasource = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = datasource["datasources"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}
    provider = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/dashboards/recsys.yml").read_text())
    compose = yaml.safe_load((OBSERVABILITY / "compose.yml").read_text())
    mounted = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounted["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


# ---------------------------------------------------------------- compose profiles


def test_profiles_point_at_the_stacks_services():
    observability = yaml.safe_load((OBSERVABILITY / "compose.yml").read_text())["services"]
    assert {n: s["profiles"] for n, s in observability.items()} == {
        "otel-collector": ["tracing"], "jaeger": ["tracing"], "prometheus": ["monitoring"], "grafana": ["monitoring"],
    }
    scrape = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())["scrape_configs"]
    jobs = {job["job_name"]: job["dns_sd_configs"][0] for job in scrape}
    assert set(jobs) == {"gateway", "query", "index"}
    for compose_file in ("docker-compose.yml", "docker-compose.shards.yml"):
        compose = yaml.safe_load((ROOT / compose_file).read_text())
        assert compose["include"] == ["deploy/observability/compose.yml"], compose_file
        for name, service in compose["services"].items():
            target = service["build"]["target"]
            if target == "trainer":
                continue
            env = service["environment"]
            prefix = {"gateway": "GATEWAY_", "query": "QUERY_", "index": "INDEX_"}[target]
            assert name in jobs[target]["names"], f"{compose_file}: {name} is not scraped"
            assert int(env[prefix + "METRICS_PORT"]) == jobs[target]["port"], name
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
            # Off unless the shell turns it on.
            assert env["OTEL_TRACES_EXPORTER"] == "${OTEL_TRACES_EXPORTER:-none}", name
