"""Alerts, the dashboard and the Collector example refer to what the code really exports.

- the PrometheusRule's groups pass `promtool check rules`, and `promtool test rules`
  shows the rollback and backend alerts firing on series shaped like the real metrics;
- every metric name in every PromQL expression of the dashboard and the alerts is one the
  real metrics classes register (with the `_total`, `_bucket`, `_count`, `_sum` and
  `_info` names Prometheus exposes);
- the Collector example sends the analyzer only the spans the analysis reads, and only
  the routers' ones.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from router.metrics import DriftMetrics, RolloutMetrics, RouterMetrics
from router.rollout.analysis import Analyzer
from router.rollout.spans_in import WANTED_SPANS
from server.lifecycle.drift import DriftGauges
from server.serving.metrics import ServerMetrics
from tests.helm.conftest import CHART, COMBINATIONS, Render, container, find

FULL = "cc-canarycast"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_metric_names() -> set[str]:
    """Names the real server, router, controller, analyzer and drift exporter metrics
    expose."""
    names: set[str] = set()
    for registry in (ServerMetrics().registry, RouterMetrics().registry):
        names |= _names(registry)
    rollout = CollectorRegistry()
    RolloutMetrics(rollout)
    DriftMetrics(rollout)
    Analyzer(registry=rollout)
    DriftGauges(rollout)
    return names | _names(rollout)


def _names(registry: CollectorRegistry) -> set[str]:
    return {f"{family.name}{s}" for family in registry.collect() for s in SUFFIXES[family.type]}


KEYWORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "increase",
    "changes",
    "histogram_quantile",
    "label_values",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        token = match.group()
        following = text[match.end() :].lstrip()
        if token.lower() in KEYWORDS or following.startswith("("):
            continue
        if re.fullmatch(r"[0-9.e+-]+", token) or token.startswith("$"):
            continue
        names.add(token)
    return names


def test_the_name_extraction_reads_promql_as_meant() -> None:
    assert metric_names(
        'sum by (le, variant) (rate(a_bucket{x="y{z}", code!="OK"}[$__rate_interval])) '
        "/ ignoring (v) group_left sum(b_total) > 1 + 0.05 and on (pod) c == 1"
    ) == {"a_bucket", "b_total", "c"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            assert inner is not None
            exprs.append(inner.group(1))
    return exprs


def test_the_dashboard_queries_only_metrics_the_code_exports() -> None:
    exported = exported_metric_names()
    assert "canarycast_router_routed_calls_total" in exported  # the suffixes are right
    assert "canarycast_router_backend_duration_seconds_bucket" in exported
    assert "canarycast_server_model_info" in exported
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    used = set().union(*(metric_names(e) for e in exprs))
    unknown = sorted(used - exported)
    assert not unknown, f"the dashboard names metrics nobody exports: {unknown}"
    # request rate, latency and errors by variant; rollout weight and error ratio over time
    for needed in (
        "canarycast_router_routed_calls_total",
        "canarycast_router_backend_duration_seconds_bucket",
        "canarycast_router_backend_failures_total",
        "canarycast_rollout_canary_weight",
        "canarycast_rollout_error_ratio",
    ):
        assert needed in used


def prometheus_rule(render: Render) -> dict[str, Any]:
    return find(render(COMBINATIONS["monitoring"]), "PrometheusRule", FULL)


def test_the_alerts_name_only_exported_metrics(render: Render) -> None:
    exported = exported_metric_names()
    rules = [r for g in prometheus_rule(render)["spec"]["groups"] for r in g["rules"]]
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= exported, f"{rule['alert']}: {sorted(names - exported)}"


# The alerts' descriptions, as Prometheus renders their templates on the test series.
ROLLED_BACK = (
    "The controller in forecasts rolled a canary back in the last 15 minutes. "
    "`canarycast rollout history` shows the reason."
)
NOT_SERVING = "No router sees canary at 10.1.2.3:50051 serving for 2 minutes."
DRIFTED = (
    'performance has drifted for 30 minutes ("performance": the stable model\'s error on '
    "recent observations). The retraining job (with --on-drift) trains a candidate on its "
    "next run; `canarycast drift` shows the report."
)
FAILING = "50% of the calls sent to the canary failed over 5 minutes (threshold 0.05)."


def test_promtool_accepts_the_rules_and_the_alerts_fire(
    render: Render, promtool: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": prometheus_rule(render)["spec"]["groups"]}))
    check = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    ns = 'namespace="forecasts"'
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # the controller's phase gauge: progressing, then rolled back at minute 3
                    {
                        "series": f'canarycast_rollout_phase{{{ns}, pod="c", phase="rolled_back"}}',
                        "values": "0 0 0 1x30",
                    },
                    {
                        "series": f'canarycast_rollout_phase{{{ns}, pod="c", phase="progressing"}}',
                        "values": "1 1 1 0x30",
                    },
                    # a canary pod (dialled by IP, dns:/// backends) down for good from minute 1
                    {
                        "series": f'canarycast_router_backend_serving{{{ns}, pod="r", '
                        'variant="canary", address="10.1.2.3:50051"}',
                        "values": "1 0x20",
                    },
                    # the stable model's online error drifted from minute 5; one series did not
                    {
                        "series": f'canarycast_drift_detected{{{ns}, pod="c", '
                        'series="performance"}',
                        "values": "0x5 1x60",
                    },
                    {
                        "series": f'canarycast_drift_detected{{{ns}, pod="c", '
                        'series="seattle-temps"}',
                        "values": "0x65",
                    },
                    # half of the canary's calls failing
                    {
                        "series": f'canarycast_router_backend_failures_total{{{ns}, pod="r", '
                        'variant="canary", code="UNAVAILABLE"}',
                        "values": "0+30x20",
                    },
                    {
                        "series": f'canarycast_router_routed_calls_total{{{ns}, pod="r", '
                        'variant="canary", reason="weight", code="OK"}',
                        "values": "0+60x20",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "CanarycastCanaryRolledBack",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "CanarycastCanaryRolledBack",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "forecasts",
                                    "pod": "c",
                                    "phase": "rolled_back",
                                },
                                "exp_annotations": {
                                    "summary": "A canary of temps was rolled back",
                                    "description": ROLLED_BACK,
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "CanarycastCanaryRolledBack",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "2m",
                        "alertname": "CanarycastBackendNotServing",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "CanarycastBackendNotServing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "namespace": "forecasts",
                                    "variant": "canary",
                                    "address": "10.1.2.3:50051",
                                },
                                "exp_annotations": {
                                    "summary": "A model server is not serving",
                                    "description": NOT_SERVING,
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "CanarycastDriftDetected",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "40m",
                        "alertname": "CanarycastDriftDetected",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "forecasts",
                                    "series": "performance",
                                },
                                "exp_annotations": {
                                    "summary": "The stable model's inputs or errors have drifted",
                                    "description": DRIFTED,
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "CanarycastCanaryErrorRatioHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "namespace": "forecasts"},
                                "exp_annotations": {
                                    "summary": "Canary calls are failing",
                                    "description": FAILING,
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_collector_sends_only_the_routers_analysis_spans_to_the_analyzer(
    render: Render,
) -> None:
    m = render(COMBINATIONS["monitoring"])
    config = yaml.safe_load(find(m, "ConfigMap", f"{FULL}-otel-collector")["data"]["config.yaml"])
    pipelines = config["service"]["pipelines"]
    backend, analyzer = pipelines["traces/backend"], pipelines["traces/analyzer"]
    assert (
        backend["exporters"] == ["otlp/tracing"] and "filter/analyzer" not in backend["processors"]
    )
    assert analyzer["exporters"] == ["otlp/analyzer"]
    assert analyzer["processors"][0] == "filter/analyzer"
    endpoint = config["exporters"]["otlp/analyzer"]["endpoint"]
    controller = find(m, "Service", f"{FULL}-controller")
    otlp_port = {p["name"]: p["port"] for p in controller["spec"]["ports"]}["otlp"]
    assert endpoint == f"{FULL}-controller.forecasts.svc:{otlp_port}"
    drop_service, drop_name = config["processors"]["filter/analyzer"]["traces"]["span"]
    # spans of any service but the routers' are dropped (servers repeat forecast ids) ...
    router_env = {
        e["name"]: e.get("value") for e in container(find(m, "Deployment", f"{FULL}-router"))["env"]
    }
    assert drop_service == (
        f'resource.attributes["service.name"] != "{router_env["OTEL_SERVICE_NAME"]}"'
    )
    server_env = {
        e["name"]: e.get("value") for e in container(find(m, "Deployment", f"{FULL}-stable"))["env"]
    }
    assert server_env["OTEL_SERVICE_NAME"] != router_env["OTEL_SERVICE_NAME"]
    # ... and so is every span the analysis does not read: the kept names are its own
    pattern = re.fullmatch(r'not IsMatch\(name, "(.*)"\)', drop_name)
    assert pattern is not None
    regex = re.compile(pattern.group(1).replace("\\\\", "\\"))
    assert {n for n in WANTED_SPANS if regex.match(n)} == set(WANTED_SPANS)
    for other in (
        "canarycast.v1.Forecaster/Observe",
        "grpc.health.v1.Health/Check",
        "forecasts",
        "canarycast.v1.RolloutControl/GetStatus",
    ):
        assert not regex.match(other)
