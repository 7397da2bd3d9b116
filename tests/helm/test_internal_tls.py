"""TLS inside the release (`tls.internal`): every gRPC listener gets the certificate, every
gRPC client the CA (and, under mTLS, the client certificate), probes on TLS ports become
`canarycast health` exec probes (the routers' application port: TCP),
and every host a client dials is a name the NOTES tell the operator to put in the
certificate. The combinations `internal-tls` and `internal-mtls` (conftest) also run
through every check of test_chart.py and test_image.py (schemas, the real argparse)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

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

FULL = f"{RELEASE}-canarycast"
DIR = "/etc/canarycast/internal-tls"
CERT, KEY, CA = f"{DIR}/tls.crt", f"{DIR}/tls.key", f"{DIR}/ca.crt"
SECRET = "internal-tls"
CONTROLLER = f"{FULL}-controller"
FORECASTER = "canarycast.v1.Forecaster"


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def env_of(c: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in c["env"]}


def assert_server_flags(args: list[str], prefix: str, mtls: bool) -> None:
    assert flag(args, f"{prefix}-cert") == CERT
    assert flag(args, f"{prefix}-key") == KEY
    if mtls:
        assert flag(args, f"{prefix}-client-ca") == CA
    else:
        assert f"{prefix}-client-ca" not in args


def assert_client_flags(args: list[str], prefix: str, mtls: bool) -> None:
    assert flag(args, f"{prefix}-ca") == CA
    if mtls:
        assert flag(args, f"{prefix}-cert") == CERT
        assert flag(args, f"{prefix}-key") == KEY
    else:
        assert f"{prefix}-cert" not in args and f"{prefix}-key" not in args


def assert_tcp_probes(c: dict[str, Any], probes: tuple[str, ...]) -> None:
    for probe in probes:
        assert c[probe]["tcpSocket"] == {"port": "grpc"}, probe
        assert "grpc" not in c[probe], probe


def assert_exec_probes(
    c: dict[str, Any], probes: dict[str, str], port: int, name: str, mtls: bool
) -> None:
    """`probes`: probe -> the grpc.health.v1 service it checks; each is `canarycast health`
    over TLS against the pod's own port, checking the name clients dial, parsed by the
    command's real argument parser."""
    from cli.main import build_parser

    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    for probe, service in probes.items():
        command = c[probe]["exec"]["command"]
        assert command[:2] == ["canarycast", "health"], probe
        args = build_parser().parse_args(command[1:])  # the image's entrypoint
        assert args.target == f"127.0.0.1:{port}" and args.service == service, probe
        assert args.tls_server_name == name, probe
        assert str(args.tls_ca) == CA, probe
        if mtls:
            assert (str(args.tls_cert), str(args.tls_key)) == (CERT, KEY), probe
        else:
            assert args.tls_cert is None and args.tls_key is None, probe
        assert DIR in mounted
        assert "grpc" not in c[probe] and "tcpSocket" not in c[probe], probe


def assert_paths_in_the_secret(deployment: dict[str, Any], c: dict[str, Any]) -> int:
    """Every in-cluster TLS path the container is given lies in a read-only mount of the
    Secret; returns how many there were."""
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    values = [*c["args"], *(v for v in env_of(c).values() if v)]
    paths = [v for v in values if v.startswith(DIR + "/")]
    for path in paths:
        [mount] = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True, path
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == SECRET, path
        assert secret["defaultMode"] == 0o440, path
        assert Path(path).name in ("tls.crt", "tls.key", "ca.crt")
    return len(paths)


@pytest.mark.parametrize("combination", ["internal-tls", "internal-mtls"])
def test_every_listener_gets_the_certificate_and_every_client_the_ca(
    render: Render, combination: str
) -> None:
    m = render(COMBINATIONS[combination])
    mtls = combination == "internal-mtls"
    for variant in ("stable", "canary"):
        server = find(m, "Deployment", f"{FULL}-{variant}")
        c = container(server)
        assert_server_flags(c["args"], "--tls", mtls)
        probes = {"startupProbe": "", "livenessProbe": "", "readinessProbe": FORECASTER}
        name = f"{FULL}-{variant}-pods.{NAMESPACE}.svc"  # what the routers check
        assert_exec_probes(c, probes, 50051, name, mtls)
        # mtls: its port, and its exporter to the Collector (collector mode)
        assert assert_paths_in_the_secret(server, c) == (6 if mtls else 2)

    controller = find(m, "Deployment", CONTROLLER)
    c = container(controller, "controller")  # (beside it, with observations: the drift exporter)
    assert_server_flags(c["args"], "--tls", mtls)  # control API and weight stream
    assert_server_flags(c["args"], "--otlp-tls", mtls)  # the analyzer's OTLP receiver
    assert_client_flags(c["args"], "--backend-tls", mtls)  # its own channels to the servers
    assert_exec_probes(c, {"livenessProbe": "", "readinessProbe": ""}, 50050, CONTROLLER, mtls)
    assert assert_paths_in_the_secret(controller, c) == (9 if mtls else 5)

    router = find(m, "Deployment", f"{FULL}-router")
    c = container(router)
    assert_client_flags(c["args"], "--backend-tls", mtls)
    assert_client_flags(c["args"], "--follow-tls", mtls)
    env = env_of(c)
    assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"] or "").scheme == "https"
    assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == CA
    assert "OTEL_EXPORTER_OTLP_INSECURE" not in env
    if mtls:
        assert env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] == CERT
        assert env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] == KEY
    else:
        assert "OTEL_EXPORTER_OTLP_CLIENT_KEY" not in env
    assert assert_paths_in_the_secret(router, c) == (9 if mtls else 3)
    if mtls:  # router.tls too: its own Secret on its own port, beside the in-cluster one
        assert flag(c["args"], "--tls-cert") == "/etc/canarycast/tls/tls.crt"
        volumes = {v["name"]: v for v in pod_spec(router)["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "router-tls"
        assert_tcp_probes(c, ("livenessProbe", "readinessProbe"))
    else:  # the routers' application port is router.tls's business: still plaintext here
        assert "--tls-cert" not in c["args"]
        assert c["readinessProbe"]["grpc"]["port"] == 50050


def test_analyzer_mode_sends_spans_to_the_controller_over_tls(render: Render) -> None:
    router = container(find(render(COMBINATIONS["internal-tls"]), "Deployment", f"{FULL}-router"))
    assert env_of(router)["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"https://{CONTROLLER}:4317"
    assert flag(router["args"], "--follow") == f"{CONTROLLER}:50050"


def test_collector_mode_exports_over_tls_and_the_collector_example_uses_the_secret(
    render: Render,
) -> None:
    m = render(COMBINATIONS["internal-mtls"])
    endpoint = COMBINATIONS["internal-mtls"]["tracing"]["collectorEndpoint"]
    for name in ("router", "stable", "canary"):
        env = env_of(container(find(m, "Deployment", f"{FULL}-{name}")))
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint, name
        assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == CA, name
        assert env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] == CERT, name
        assert env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] == KEY, name
        assert "OTEL_EXPORTER_OTLP_INSECURE" not in env, name
    config = yaml.safe_load(find(m, "ConfigMap", f"{FULL}-otel-collector")["data"]["config.yaml"])
    receiver = config["receivers"]["otlp"]["protocols"]["grpc"]
    assert receiver["tls"] == {"cert_file": CERT, "key_file": KEY, "client_ca_file": CA}
    analyzer = config["exporters"]["otlp/analyzer"]
    assert analyzer["endpoint"] == f"{CONTROLLER}.{NAMESPACE}.svc:4317"
    assert analyzer["tls"] == {"ca_file": CA, "cert_file": CERT, "key_file": KEY}
    # the tracing backend is outside the release: left as configured
    assert config["exporters"]["otlp/tracing"]["tls"] == {"insecure": True}


def test_retraining_starts_its_rollout_over_tls_with_the_pods_certificate(render: Render) -> None:
    m = render(COMBINATIONS["internal-mtls"])
    cron = find(m, "CronJob", f"{FULL}-retrain")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [job] = pod["containers"]
    assert "--dry-run" not in job["args"]  # it starts the rollout itself, over mTLS
    assert flag(job["args"], "--tls-ca") == CA
    assert flag(job["args"], "--tls-cert") == CERT and flag(job["args"], "--tls-key") == KEY
    [mount] = [v for v in job["volumeMounts"] if v["name"] == "internal-tls"]
    assert mount["readOnly"] is True and CA.startswith(mount["mountPath"])
    [volume] = [v for v in pod["volumes"] if v["name"] == "internal-tls"]
    assert volume["secret"]["secretName"] == "internal-tls"


def test_without_internal_tls_nothing_changes(render: Render) -> None:
    m = render({})
    for name in ("stable", "canary", "router", "controller"):
        deployment = find(m, "Deployment", f"{FULL}-{name}")
        c = container(deployment)
        assert not [a for a in c["args"] if a.startswith(DIR)], name
        assert "internal-tls" not in {v["name"] for v in pod_spec(deployment)["volumes"]}, name
        assert "grpc" in c["readinessProbe"], name
    controller = container(find(m, "Deployment", CONTROLLER))
    assert "--otlp-tls-cert" not in controller["args"]
    router = env_of(container(find(m, "Deployment", f"{FULL}-router")))
    assert router["OTEL_EXPORTER_OTLP_INSECURE"] == "true"
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" not in router


@pytest.mark.parametrize("combination", ["internal-tls", "internal-mtls"])
def test_the_notes_name_every_host_a_client_dials(
    helm: str, render: Render, tmp_path: Path, combination: str
) -> None:
    """The certificate must carry every name a client checks it against: the NOTES list
    them, and each dialled host (routers and controller -> servers, routers -> controller,
    the exporters -> the OTLP receivers) is among them."""
    values = COMBINATIONS[combination]
    result = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        values=values,
        tmp=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    listed = notes.split("its certificate must name:", 1)[1].split("\nand `localhost`", 1)[0]
    names = {line.strip() for line in listed.strip().splitlines()}
    m = render(values)
    dialled = set()
    for name in ("router", "controller"):
        args = container(find(m, "Deployment", f"{FULL}-{name}"), name)["args"]
        for backend in (flag(args, "--stable"), flag(args, "--canary")):
            dialled.add(backend.removeprefix("dns:///").rsplit(":", 1)[0])
    router = container(find(m, "Deployment", f"{FULL}-router"))
    dialled.add(flag(router["args"], "--follow").rsplit(":", 1)[0])
    dialled.add(urlsplit(env_of(router)["OTEL_EXPORTER_OTLP_ENDPOINT"] or "").hostname or "")
    if values.get("otelCollector", {}).get("config", {}).get("enabled"):
        config = yaml.safe_load(
            find(m, "ConfigMap", f"{FULL}-otel-collector")["data"]["config.yaml"]
        )
        dialled.add(config["exporters"]["otlp/analyzer"]["endpoint"].rsplit(":", 1)[0])
    assert dialled <= names, f"dialled but not in the NOTES: {dialled - names}"
    assert f"{FULL}-stable-pods.{NAMESPACE}.svc" in names and CONTROLLER in names
    assert "--tls-ca ca.crt" in notes  # the port-forward commands speak TLS too
