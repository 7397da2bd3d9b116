"""The chart renders, validates against the Kubernetes OpenAPI schemas, and honours its values.

Every combination in `COMBINATIONS` is rendered with the real `helm template`; every
manifest is validated (strictly: unknown fields fail) against a fixed Kubernetes version
with the schemas `kubernetes-validate` ships; the Prometheus Operator's CRDs, which have no
schema there, are checked against the structure their CRDs document (below).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from router.rollout.controller import RolloutPolicy
from tests.helm.conftest import (
    CHART,
    COMBINATIONS,
    NAMESPACE,
    RELEASE,
    Render,
    container,
    find,
    flag,
    run_helm,
)

KUBERNETES_VERSION = "1.31.0"
FULL = f"{RELEASE}-canarycast"

#: The fields of the Prometheus Operator CRDs (monitoring.coreos.com/v1) that we use, with
#: the types and required keys their CRDs document.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {
                                                "type": "string",
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$",
                                            },
                                        },
                                        "targetLabel": {"type": "string"},
                                        "action": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string"},
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


def test_helm_lint_passes_with_every_combination(helm: str, tmp_path: Path) -> None:
    for name, values in COMBINATIONS.items():
        result = run_helm(helm, "lint", "--strict", str(CHART), values=values, tmp=tmp_path)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_manifest_validates_against_the_kubernetes_schemas(
    render: Render, combination: str
) -> None:
    manifests = render(COMBINATIONS[combination])
    assert manifests
    kinds = set()
    for manifest in manifests:
        kinds.add(manifest["kind"])
        where = f"{combination}: {manifest['kind']}/{manifest['metadata']['name']}"
        assert manifest["metadata"].get("namespace") in (NAMESPACE, None), where
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/name"] == "canarycast", where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert "app.kubernetes.io/version" in labels and "helm.sh/chart" in labels, where
        if manifest["kind"] in CRD_SCHEMAS:
            jsonschema.validate(manifest, CRD_SCHEMAS[manifest["kind"]])
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from exc
    assert {"Deployment", "Service", "ConfigMap"} <= kinds


def test_the_default_install_has_every_part(render: Render) -> None:
    m = render({})
    deployments = {d["metadata"]["name"] for d in m if d["kind"] == "Deployment"}
    assert deployments == {
        f"{FULL}-stable",
        f"{FULL}-canary",
        f"{FULL}-router",
        f"{FULL}-controller",
    }
    for kind, name in [
        ("HorizontalPodAutoscaler", f"{FULL}-router"),
        ("PersistentVolumeClaim", f"{FULL}-registry"),
        ("PersistentVolumeClaim", f"{FULL}-controller-state"),
        ("Secret", f"{FULL}-admin"),
        ("ConfigMap", f"{FULL}-controller"),
        ("ConfigMap", f"{FULL}-controller-desired"),
        ("NetworkPolicy", f"{FULL}-controller"),
        ("PodDisruptionBudget", f"{FULL}-stable"),
        ("PodDisruptionBudget", f"{FULL}-router"),
        ("ServiceAccount", FULL),
    ]:
        find(m, kind, name)
    # monitoring needs the Prometheus Operator: off by default
    assert not [d for d in m if d["kind"] in CRD_SCHEMAS]
    registry = find(m, "PersistentVolumeClaim", f"{FULL}-registry")
    assert registry["spec"]["accessModes"] == ["ReadWriteMany"]


def test_servers_follow_their_aliases_with_grpc_probes_and_hardening(render: Render) -> None:
    m = render({})
    for variant, ref in [("stable", "temps@stable"), ("canary", "temps@canary")]:
        deployment = find(m, "Deployment", f"{FULL}-{variant}")
        c = container(deployment)
        assert c["args"][0] == "serve"
        assert flag(c["args"], "--model") == ref and flag(c["args"], "--variant") == variant
        assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "canarycast.v1.Forecaster"}
        assert c["livenessProbe"]["grpc"]["port"] == 50051 and "grpc" in c["startupProbe"]
        [init] = deployment["spec"]["template"]["spec"]["initContainers"]
        assert init["args"][-4:] == ["show", ref, "--wait", "86400"]
        assert_hardened(deployment)
        registry = [v for v in c["volumeMounts"] if v["name"] == "registry"]
        assert registry and registry[0]["readOnly"] is True
        service = find(m, "Service", f"{FULL}-{variant}")
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "grpc" and grpc_port["port"] == 50051
        # routers resolve the headless twin to every ready pod and balance per call
        pods = find(m, "Service", f"{FULL}-{variant}-pods")
        assert pods["spec"]["clusterIP"] == "None"
        assert pods["spec"]["selector"] == service["spec"]["selector"]
        assert pods["spec"]["ports"][0]["port"] == 50051
        for component in ("router", "controller"):
            args = container(find(m, "Deployment", f"{FULL}-{component}"))["args"]
            assert (
                flag(args, f"--{variant}") == f"dns:///{FULL}-{variant}-pods.{NAMESPACE}.svc:50051"
            )
    # no canary version in values yet: no idle canary servers
    assert find(m, "Deployment", f"{FULL}-canary")["spec"]["replicas"] == 0
    assert find(m, "Deployment", f"{FULL}-stable")["spec"]["replicas"] == 2


def assert_hardened(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "resources" in c and c["resources"].get("requests"), c["name"]
        mounts = {v["mountPath"] for v in c.get("volumeMounts", [])}
        if c["name"] in ("server", "router", "controller"):
            assert "/tmp" in mounts, c["name"]  # writable scratch on a read-only root


def test_a_canary_version_in_values_is_what_starts_a_rollout(render: Render) -> None:
    m = render(COMBINATIONS["shadow-rollout"])
    desired = find(m, "ConfigMap", f"{FULL}-controller-desired")
    assert desired["data"] == {"canary": "3f2a9c1b7d04"}
    controller = find(m, "Deployment", f"{FULL}-controller")
    args = container(controller)["args"]
    assert flag(args, "--desired-canary") == "/etc/canarycast/desired/canary"
    mounts = {v["name"]: v for v in container(controller)["volumeMounts"]}
    # no subPath: a ConfigMap change reaches the running controller without a restart
    assert mounts["desired"]["mountPath"] == "/etc/canarycast/desired"
    assert "subPath" not in mounts["desired"]
    volumes = {v["name"]: v for v in controller["spec"]["template"]["spec"]["volumes"]}
    assert volumes["desired"]["configMap"]["name"] == f"{FULL}-controller-desired"
    canary = find(m, "Deployment", f"{FULL}-canary")
    assert canary["spec"]["replicas"] == 2
    assert find(m, "PodDisruptionBudget", f"{FULL}-canary")
    router = find(m, "Deployment", f"{FULL}-router")
    assert flag(container(router)["args"], "--mode") == "shadow"
    assert router["spec"]["replicas"] == 4
    assert not [d for d in m if d["kind"] == "HorizontalPodAutoscaler"]


def test_the_controller_version_alone_does_not_restart_the_controller(render: Render) -> None:
    before = find(render({}), "Deployment", f"{FULL}-controller")
    after = find(
        render({"canary": {"model": {"version": "abcdef"}}}), "Deployment", f"{FULL}-controller"
    )
    assert before["spec"]["template"] == after["spec"]["template"]
    policy = find(
        render({"controller": {"policy": {"steps": [0.5, 1.0]}}}),
        "Deployment",
        f"{FULL}-controller",
    )
    assert (
        policy["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
        != before["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
    )


def test_the_controller_is_one_replica_with_state_policy_and_token(
    render: Render, tmp_path: Path
) -> None:
    m = render({})
    controller = find(m, "Deployment", f"{FULL}-controller")
    assert controller["spec"]["replicas"] == 1
    assert controller["spec"]["strategy"] == {"type": "Recreate"}
    args = container(controller)["args"]
    assert flag(args, "--registry") == "/var/lib/canarycast/registry"
    assert flag(args, "--model") == "temps"
    assert flag(args, "--stable") == f"dns:///{FULL}-stable-pods.{NAMESPACE}.svc:50051"
    assert flag(args, "--canary") == f"dns:///{FULL}-canary-pods.{NAMESPACE}.svc:50051"
    assert flag(args, "--otlp-port") == "4317"
    assert_hardened(controller)
    volumes = {v["name"]: v for v in controller["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == f"{FULL}-controller-state"
    assert volumes["admin-token"]["secret"]["secretName"] == f"{FULL}-admin"
    [seed] = controller["spec"]["template"]["spec"]["initContainers"]
    assert seed["command"][:2] == ["sh", "-c"]
    # The policy ConfigMap is a policy the controller accepts.
    policy = find(m, "ConfigMap", f"{FULL}-controller")["data"]["policy.json"]
    (tmp_path / "policy.json").write_text(policy)
    loaded = RolloutPolicy.from_file(tmp_path / "policy.json")
    assert loaded.steps == (0.05, 0.1, 0.25, 0.5, 1.0) and loaded.min_step_seconds == 60
    secret = find(m, "Secret", f"{FULL}-admin")
    assert len(secret["data"]["token"]) >= 40
    service = find(m, "Service", f"{FULL}-controller")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 50050,
        "otlp": 4317,
        "metrics": 9101,
    }


def test_routers_follow_the_controller_and_send_it_their_spans(render: Render) -> None:
    m = render({})
    router = find(m, "Deployment", f"{FULL}-router")
    c = container(router)
    assert flag(c["args"], "--follow") == f"{FULL}-controller:50050"
    assert flag(c["args"], "--admin-token-file") == "/etc/canarycast/admin/token"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{FULL}-controller:4317"
    assert env["OTEL_SERVICE_NAME"] == "canarycast-router"
    assert "replicas" not in router["spec"]  # the HPA owns it
    hpa = find(m, "HorizontalPodAutoscaler", f"{FULL}-router")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULL}-router"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert c["readinessProbe"]["grpc"]["port"] == 50050
    assert_hardened(router)
    # servers export no spans straight to the analyzer (their forecast ids would repeat)
    server_env = {e["name"] for e in container(find(m, "Deployment", f"{FULL}-stable"))["env"]}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in server_env


def test_routers_store_observations_and_a_cronjob_retrains_from_them(render: Render) -> None:
    assert not [m for m in render({}) if m["kind"] == "CronJob"]
    m = render(COMBINATIONS["retrain"])
    router = container(find(m, "Deployment", f"{FULL}-router"))
    assert flag(router["args"], "--observations") == (
        "/var/lib/canarycast/observations/$(POD_NAME).db"
    )
    assert {"name": "observations", "mountPath": "/var/lib/canarycast/observations"} in (
        router["volumeMounts"]
    )
    claim = find(m, "PersistentVolumeClaim", f"{FULL}-observations")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # the drift exporter beside the controller reads the routers' stores, read-only; the
    # controller (torch-free) neither reads nor stores observations
    controller = find(m, "Deployment", f"{FULL}-controller")
    c = container(controller, "controller")
    assert "--observations" not in c["args"] and "--drift-observations" not in c["args"]
    assert "observations" not in {v["name"] for v in c["volumeMounts"]}
    drift = container(controller, "drift")
    assert drift["args"][0] == "drift"
    assert flag(drift["args"], "--observations") == "/var/lib/canarycast/observations"
    assert flag(drift["args"], "--registry") == "/var/lib/canarycast/registry"
    assert flag(drift["args"], "--model") == "temps"
    assert flag(drift["args"], "--serve-metrics") == "9102"
    assert flag(drift["args"], "--metrics-host") == "0.0.0.0"
    assert flag(drift["args"], "--interval") == "300"
    assert {
        "name": "observations",
        "mountPath": "/var/lib/canarycast/observations",
        "readOnly": True,
    } in drift["volumeMounts"]
    assert drift["ports"] == [{"name": "drift-metrics", "containerPort": 9102, "protocol": "TCP"}]
    assert drift["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "drift-metrics"}
    assert_hardened(controller)
    volumes = {v["name"]: v for v in controller["spec"]["template"]["spec"]["volumes"]}
    assert volumes["observations"]["persistentVolumeClaim"]["readOnly"] is True
    service = find(m, "Service", f"{FULL}-controller")
    assert {"name": "drift-metrics", "port": 9102, "targetPort": "drift-metrics"}.items() <= (
        next(p for p in service["spec"]["ports"] if p["name"] == "drift-metrics").items()
    )
    ingress = find(m, "NetworkPolicy", f"{FULL}-controller")["spec"]["ingress"]
    assert {"port": "drift-metrics", "protocol": "TCP"} in ingress[-1]["ports"]
    # without observations, no exporter (nothing to check drift on)
    plain = find(render({}), "Deployment", f"{FULL}-controller")
    assert [c["name"] for c in plain["spec"]["template"]["spec"]["containers"]] == ["controller"]
    cron = find(m, "CronJob", f"{FULL}-retrain")
    assert cron["spec"]["schedule"] == "@daily"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [job] = pod["containers"]
    args = job["args"]
    assert args[0] == "retrain"
    assert flag(args, "--observations") == "/var/lib/canarycast/observations"
    assert flag(args, "--router") == f"{FULL}-controller:50050"
    assert flag(args, "--holdout") == "168"
    assert "--on-drift" in args and "--dry-run" in args
    claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in pod["volumes"]}
    assert claims["observations"] == {"claimName": f"{FULL}-observations", "readOnly": True}
    assert claims["registry"]["claimName"] == f"{FULL}-registry"
    assert job["securityContext"]["readOnlyRootFilesystem"] is True
    # the job may reach the control API (it starts the rollout)
    policy = find(m, "NetworkPolicy", f"{FULL}-controller")
    control = policy["spec"]["ingress"][0]["from"]
    components = [
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for peer in control
    ]
    assert "retrain" in components and "router" in components


def test_collector_mode_sends_every_span_through_the_collector(render: Render) -> None:
    m = render(COMBINATIONS["monitoring"])
    for name in ("router", "stable"):
        env = {
            e["name"]: e.get("value")
            for e in container(find(m, "Deployment", f"{FULL}-{name}"))["env"]
        }
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"


def test_tls_on_the_routers(render: Render) -> None:
    m = render(COMBINATIONS["tls"])
    router = find(m, "Deployment", f"{FULL}-router")
    c = container(router)
    assert flag(c["args"], "--tls-cert") == "/etc/canarycast/tls/tls.crt"
    assert flag(c["args"], "--tls-key") == "/etc/canarycast/tls/tls.key"
    assert flag(c["args"], "--tls-client-ca") == "/etc/canarycast/tls/ca.crt"
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "router-tls"
    assert "tcpSocket" in c["readinessProbe"] and "grpc" not in c["readinessProbe"]
    plain = container(find(render({}), "Deployment", f"{FULL}-router"))
    assert "--tls-cert" not in plain["args"]


def test_an_existing_secret_and_claims_are_used_not_made(render: Render) -> None:
    m = render(COMBINATIONS["existing-secret"])
    assert not [d for d in m if d["kind"] == "Secret"]
    assert not [d for d in m if d["kind"] == "PersistentVolumeClaim"]
    for name in ("controller", "router"):
        volumes = {
            v["name"]: v
            for v in find(m, "Deployment", f"{FULL}-{name}")["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["admin-token"]["secret"]["secretName"] == "ops-token"
        assert volumes["admin-token"]["secret"]["items"] == [{"key": "admin", "path": "token"}]
    controller = find(m, "Deployment", f"{FULL}-controller")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in controller["volumes"]}
    assert volumes["registry"]["persistentVolumeClaim"]["claimName"] == "shared-models"
    assert "emptyDir" in volumes["state"]
    policy = find(m, "NetworkPolicy", f"{FULL}-controller")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "ml-ops"}}} in peers


def test_the_control_api_is_open_to_routers_and_operators_only(render: Render) -> None:
    m = render({})
    policy = find(m, "NetworkPolicy", f"{FULL}-controller")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "controller"
    )
    grpc_rule, otlp_rule, metrics_rule = policy["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    router_labels = find(m, "Deployment", f"{FULL}-router")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert grpc_rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    k: router_labels[k]
                    for k in (
                        "app.kubernetes.io/name",
                        "app.kubernetes.io/instance",
                        "app.kubernetes.io/component",
                    )
                }
            }
        }
    ]
    assert otlp_rule["from"] == grpc_rule["from"]
    assert "from" not in metrics_rule  # scraping is open unless metricsFrom says otherwise


def test_an_image_baked_registry_needs_no_volume(render: Render) -> None:
    m = render(COMBINATIONS["image-registry"])
    assert not [
        d for d in m if d["kind"] in ("NetworkPolicy", "PodDisruptionBudget", "ServiceAccount")
    ]
    claims = [d["metadata"]["name"] for d in m if d["kind"] == "PersistentVolumeClaim"]
    assert claims == [f"{FULL}-controller-state"]  # no registry claim
    assert not [d for d in m if d["metadata"]["name"] == f"{FULL}-canary"]
    stable = find(m, "Deployment", f"{FULL}-stable")
    c = container(stable)
    assert flag(c["args"], "--registry") == "/opt/canarycast/registry"
    assert flag(c["args"], "--model") == "temps:3f2a9c1b7d04"
    assert "initContainers" not in stable["spec"]["template"]["spec"]
    assert [v["name"] for v in c["volumeMounts"]] == ["tmp"]
    assert "--canary" not in container(find(m, "Deployment", f"{FULL}-router"))["args"]
    assert stable["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_monitoring_resources_are_rendered_when_enabled(render: Render) -> None:
    m = render(COMBINATIONS["monitoring"])
    monitor = find(m, "ServiceMonitor", FULL)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # every Service it selects has a port named `metrics`
    selector = monitor["spec"]["selector"]["matchLabels"]
    [absent] = monitor["spec"]["selector"]["matchExpressions"]
    assert absent["operator"] == "DoesNotExist"
    services = [
        s
        for s in m
        if s["kind"] == "Service"
        and selector.items() <= s["metadata"]["labels"].items()
        and absent["key"] not in s["metadata"]["labels"]
    ]
    assert len(services) == 4  # stable, canary, router, controller: each pod scraped once
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in services)
    rule = find(m, "PrometheusRule", FULL)
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "CanarycastCanaryRolledBack",
        "CanarycastCanaryErrorRatioHigh",
        "CanarycastAnalyzerLagging",
        "CanarycastAnalyzerEvicting",
        "CanarycastBackendNotServing",
    } <= alerts
    dashboard = find(m, "ConfigMap", f"{FULL}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["canarycast.json"])["uid"] == "canarycast"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"router": {"mode": "canary-only"}}, "/router/mode"),
        ({"router": {"mirrorFraction": 1.5}}, "/router/mirrorFraction"),
        ({"stable": {"replicas": 0}}, "/stable/replicas"),
        ({"canary": {"model": {"version": "not-a-version"}}}, "/canary/model/version"),
        ({"registry": {"source": "s3"}}, "/registry/source"),
        (
            {"registry": {"source": "image"}, "canary": {"model": {"version": "abcdef"}}},
            "/canary/model/version",
        ),
        ({"router": {"tls": {"enabled": True}}}, "/router/tls/secretName"),
        ({"controller": {"policy": {"on_budget": "ignore"}}}, "/controller/policy/on_budget"),
        ({"controller": {"policy": {"steps": [0.5, 2]}}}, "/controller/policy/steps/1"),
        ({"controller": {"polcy": {}}}, "polcy"),
        ({"server": {"port": 70000}}, "/server/port"),
        ({"tracing": {"mode": "zipkin"}}, "/tracing/mode"),
        ({"model": {"name": "bad name"}}, "/model/name"),
        ({"retrain": {"enabled": True}}, "/observations/enabled"),
        ({"retrain": {"schedule": "every night"}}, "/retrain/schedule"),
        ({"tls": {"internal": {"enabled": True}}}, "/tls/internal/secretName"),
        ({"tls": {"internal": {"mtls": True, "secretName": "x"}}}, "/tls/internal/enabled"),
        (
            {"tls": {"internal": {"enabled": True, "secretName": "Internal_TLS"}}},
            "/tls/internal/secretName",
        ),
        ({"tls": {"internal": {"enable": True}}}, "enable"),
        ({"tls": {"external": {}}}, "external"),
        (
            {
                "tls": {"internal": {"enabled": True, "secretName": "x"}},
                "tracing": {"mode": "collector", "collectorEndpoint": "http://otel:4317"},
            },
            "/tracing/collectorEndpoint",
        ),
    ],
)
def test_bad_values_are_rejected_by_the_schema(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_values_yaml_passes_its_own_schema_and_the_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(values, schema)
    readme = (CHART / "README.md").read_text()
    missing = [key for key in _leaves(values) if f"`{key}`" not in readme]
    assert not missing, f"values not in the chart README's table: {missing}"


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and path
            not in (
                "controller.policy",
                "stable.resources",
                "canary.resources",
                "router.resources",
                "controller.resources",
                "retrain.resources",
            )
        ):
            keys += _leaves(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_servers_and_routers_stop_being_ready_before_they_drain(render: Render) -> None:
    m = render({"server": {"grace": 10.0, "drainDelay": 2.5}, "router": {"drainDelay": 0}})
    for name, delay, period in (("stable", "2.5", 18), ("canary", "2.5", 18), ("router", "0", 15)):
        deployment = find(m, "Deployment", f"{FULL}-{name}")
        assert flag(container(deployment)["args"], "--drain-delay") == delay
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == period


def test_server_workers_follow_the_cpu_request_and_routers_dial_each_worker(
    render: Render,
) -> None:
    def workers_of(manifests: list[dict[str, Any]], variant: str) -> str:
        return flag(
            container(find(manifests, "Deployment", f"{FULL}-{variant}"))["args"], "--workers"
        )

    def addresses(manifests: list[dict[str, Any]], component: str, variant: str) -> list[str]:
        args = container(find(manifests, "Deployment", f"{FULL}-{component}"))["args"]
        start = args.index(f"--{variant}") + 1
        end = next(i for i in range(start, len(args)) if args[i].startswith("--"))
        return args[start:end]

    pods = f"{NAMESPACE}.svc"
    m = render({})  # 500m: one process per pod, dialled on the shared port as before
    assert workers_of(m, "stable") == "1" and workers_of(m, "canary") == "1"
    assert addresses(m, "router", "stable") == [f"dns:///{FULL}-stable-pods.{pods}:50051"]
    m = render(COMBINATIONS["workers"])  # 2 and 3.5 cores: 2 and 3 workers
    assert workers_of(m, "stable") == "2" and workers_of(m, "canary") == "3"
    server = container(find(m, "Deployment", f"{FULL}-stable"))
    assert flag(server["args"], "--worker-port-base") == "50061"
    for component in ("router", "controller"):
        assert addresses(m, component, "stable") == [
            f"dns:///{FULL}-stable-pods.{pods}:{port}" for port in (50061, 50062)
        ]
        assert addresses(m, component, "canary") == [
            f"dns:///{FULL}-canary-pods.{pods}:{port}" for port in (50061, 50062, 50063)
        ]
    policy = find(m, "NetworkPolicy", f"{FULL}-servers")
    ports = policy["spec"]["ingress"][0]["ports"]
    assert {"port": 50061, "endPort": 50063, "protocol": "TCP"} in ports
    # server.workers overrides the request
    m = render({"server": {"workers": 4}})
    assert workers_of(m, "stable") == "4"
    # routers: from their own request; each worker follows the controller
    router = container(find(render({}), "Deployment", f"{FULL}-router"))
    assert flag(router["args"], "--workers") == "1" and "--follow" in router["args"]
    m = render({"router": {"resources": {"requests": {"cpu": "3"}}}})
    assert workers_of(m, "router") == "3"


def test_a_memory_limit_too_small_for_the_workers_is_refused_with_the_values_named(
    helm: str, tmp_path: Path, render: Render
) -> None:
    def template(values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)

    # 8 workers of 384Mi each do not fit the default 2Gi limit: refused, saying what to change
    result = template({"server": {"workers": 8}})
    assert result.returncode != 0
    assert "stable.resources.limits.memory (2Gi)" in result.stderr, result.stderr
    assert "8 worker processes" in result.stderr and "3072Mi" in result.stderr
    assert "server.memoryPerWorker" in result.stderr
    # the canary is checked on its own limit (decimal units too)
    result = template(
        {
            "server": {"workers": 5},
            "stable": {"resources": {"limits": {"memory": "3Gi"}}},
            "canary": {"resources": {"limits": {"memory": "1500M"}}},
        }
    )
    assert result.returncode != 0 and "canary.resources.limits.memory (1500M)" in result.stderr
    # workers from the CPU request count the same way
    result = template({"stable": {"resources": {"requests": {"cpu": "6"}}}})
    assert result.returncode != 0 and "6 worker processes" in result.stderr, result.stderr
    # a limit that holds them, a smaller estimate, or the check off: rendered
    m = render(
        {
            "server": {"workers": 5},
            "stable": {"resources": {"limits": {"memory": "2048Mi"}}},
            "canary": {"resources": {"limits": {"memory": "1920Mi"}}},
        }
    )
    assert flag(container(find(m, "Deployment", f"{FULL}-stable"))["args"], "--workers") == "5"
    render({"server": {"workers": 8, "memoryPerWorker": "250Mi"}})
    render({"server": {"workers": 8, "memoryPerWorker": 0}})
    # no limit at all (null removes the default): nothing to check against
    render(
        {
            "server": {"workers": 8},
            "stable": {"resources": {"limits": {"memory": None}}},
            "canary": {"resources": {"limits": {"memory": None}}},
        }
    )
