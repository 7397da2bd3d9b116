"""`canarycast` command line: the composition root of every process.

    canarycast train     train an LSTM on real data and register it
    canarycast serve     run a model server
    canarycast route     run a router in front of stable and canary servers
    canarycast rollout   start, watch and steer canary rollouts
    canarycast models    list / show / alias registered versions
    canarycast forecast  one-off forecast call against a server or router
    canarycast demo      the whole story on one machine

Telemetry (logging, tracing) is configured here, once, before anything runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Default registry directory for `train`, `serve` and `models` (flag `--registry` wins).
CANARYCAST_REGISTRY = "CANARYCAST_REGISTRY"
DEFAULT_REGISTRY = "registry"


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=Path(os.environ.get(CANARYCAST_REGISTRY, DEFAULT_REGISTRY)),
        help=f"registry directory (default: ${CANARYCAST_REGISTRY} or ./{DEFAULT_REGISTRY})",
    )


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {exc}") from exc


def _season_lengths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {exc}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _port_limit_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Message size and rate limit flags of a serving port (security, docs/security.md)."""
    from canarycast.validation import Limits

    g = parser.add_argument_group(f"limits on the {what}'s port")
    g.add_argument(
        "--max-message-bytes",
        type=int,
        default=Limits().max_message_bytes,
        help="largest request or answer; bigger gets RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    g.add_argument(
        "--rate-limit",
        type=float,
        metavar="CALLS_PER_S",
        help="token bucket on Forecast and Observe; over it: RESOURCE_EXHAUSTED (off if unset)",
    )
    g.add_argument(
        "--rate-burst", type=int, help="bucket size (default: one second of --rate-limit)"
    )
    g.add_argument(
        "--rate-limit-scope",
        choices=["peer", "global"],
        default="peer",
        help="one bucket per client address, or one for all (default: %(default)s)",
    )


def _tls_args(parser: argparse.ArgumentParser, prefix: str, title: str, *, server: bool) -> None:
    g = parser.add_argument_group(title)
    if server:
        g.add_argument(f"{prefix}-cert", type=Path, help="server certificate, PEM")
        g.add_argument(f"{prefix}-key", type=Path, help="server private key, PEM")
        g.add_argument(
            f"{prefix}-client-ca",
            type=Path,
            help="require client certificates signed by this CA (mTLS)",
        )
    else:
        g.add_argument(f"{prefix}-ca", type=Path, help="use TLS, trusting this CA (PEM)")
        g.add_argument(f"{prefix}-cert", type=Path, help="client certificate for mTLS, PEM")
        g.add_argument(f"{prefix}-key", type=Path, help="client private key for mTLS, PEM")


def _workers_args(parser: argparse.ArgumentParser, what: str, default: str) -> None:
    """`--workers` and `--worker-port-base` (canarycast/workers.py says how calls spread)."""
    g = parser.add_argument_group("worker processes")
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"{what} processes forked at start, each on --port (SO_REUSEPORT: connections "
        f"spread over them) and on a port of its own; 1: one process, no fork (default: "
        f"{default}; this process may use {len(os.sched_getaffinity(0))} cores)",
    )
    g.add_argument(
        "--worker-port-base",
        type=int,
        metavar="PORT",
        help="worker i also listens on PORT+i; 0: free ports (default: --port + 1, "
        "or free ports with --port 0)",
    )


def _rate_limit(args: argparse.Namespace) -> Any:
    """The `RateLimit` of `_port_limit_args`' flags, or None (off)."""
    from canarycast.grpc_server import RateLimit

    if args.rate_limit is None:
        if args.rate_burst is not None:
            raise ValueError("--rate-burst needs --rate-limit")
        return None
    burst = args.rate_burst if args.rate_burst is not None else max(1, round(args.rate_limit))
    return RateLimit(args.rate_limit, burst, per_peer=args.rate_limit_scope == "peer")


def _limits(args: argparse.Namespace) -> Any:
    from canarycast.validation import Limits

    if args.max_message_bytes < 1024:
        raise ValueError(f"--max-message-bytes must be at least 1024, got {args.max_message_bytes}")
    return Limits(max_message_bytes=args.max_message_bytes)


def build_parser() -> argparse.ArgumentParser:
    # Defaults read off the dataclasses, none built: no torch, no pandas, a fast start.
    from server.recipe import ModelConfig, TrainParams

    config, params = _defaults(ModelConfig), _defaults(TrainParams)
    parser = argparse.ArgumentParser(
        prog="canarycast",
        description="LSTM time-series forecasts over gRPC, shipped safely with canaries.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an LSTM on real data and register it")
    p.add_argument(
        "--dataset",
        required=True,
        help="bundled dataset (seattle-temps, sf-temps, seattle-weather, us-employment) "
        "or a CSV/Parquet file in long format (unique_id, ds, y)",
    )
    _registry_arg(p)
    p.add_argument("--name", required=True, help="model name in the registry")
    p.add_argument("--series", nargs="+", help="train on these series ids only (default: all)")
    p.add_argument(
        "--lookback",
        type=int,
        help="history values read (default: from the data, the longest season plus the horizon)",
    )
    p.add_argument(
        "--horizon",
        type=int,
        help="maximum horizon (default: from the frequency, e.g. a day of hourly data)",
    )
    p.add_argument(
        "--season-lengths",
        type=_season_lengths,
        help="seasons in steps, comma-separated, shortest first (the first scales MASE); "
        "default: from the frequency, e.g. 24,168 for hourly data",
    )
    p.add_argument("--hidden", type=int, default=config.hidden, help="LSTM hidden units")
    p.add_argument("--layers", type=int, default=config.layers, help="LSTM layers")
    p.add_argument("--dropout", type=float, default=config.dropout)
    p.add_argument(
        "--quantiles",
        type=_floats,
        default=list(config.quantiles),
        help="quantile levels, comma-separated, must include 0.5 (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=params.epochs)
    p.add_argument("--batch-size", type=int, default=params.batch_size)
    p.add_argument("--learning-rate", type=float, default=params.learning_rate)
    p.add_argument("--patience", type=int, default=params.patience, help="early stopping")
    p.add_argument("--seed", type=int, default=params.seed)
    p.add_argument(
        "--max-windows-per-epoch",
        type=int,
        default=params.max_windows_per_epoch,
        help="subsample training windows per epoch",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep the raw quantile head (default: conformalize the intervals on validation)",
    )
    p.add_argument("--alias", action="append", default=[], help="point this alias at the result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the registered version as JSON")

    p = sub.add_parser("serve", help="run a model server")
    _registry_arg(p)
    p.add_argument("--model", required=True, help="NAME@ALIAS (follows the alias) or NAME:VERSION")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port, 0 for a free one")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (off if unset)")
    p.add_argument("--variant", help="variant reported in answers (default: the alias)")
    p.add_argument("--max-batch-size", type=int, default=256, help="series per forward pass")
    p.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=2.0,
        help="longest wait to fill a batch (0: take what is queued)",
    )
    p.add_argument("--max-queue-size", type=int, default=8192, help="series queued at most")
    p.add_argument("--reload-interval", type=float, default=1.0, help="alias poll, seconds")
    p.add_argument("--grace", type=float, default=10.0, help="drain time on SIGTERM, seconds")
    p.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="on SIGTERM, NOT_SERVING for this long before draining, seconds",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="calls in progress at most; beyond it RESOURCE_EXHAUSTED at once (default: no limit)",
    )
    _workers_args(
        p, "server", "one per core this process may use; routers dial each worker's own port"
    )
    _tls_args(p, "--tls", "TLS on the server's port", server=True)
    _port_limit_args(p, "server")

    p = sub.add_parser("route", help="run a router in front of stable and canary servers")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=int, default=50050, help="gRPC port, 0 for a free one")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (off if unset)")
    p.add_argument(
        "--stable",
        nargs="+",
        required=True,
        metavar="HOST:PORT",
        help="stable replicas; dns:///HOST:PORT stands for every address HOST resolves to "
        "(a headless Service), re-resolved every --dns-refresh seconds",
    )
    p.add_argument(
        "--canary", nargs="+", default=[], metavar="HOST:PORT", help="canary replicas (as --stable)"
    )
    p.add_argument(
        "--dns-refresh",
        type=float,
        default=5.0,
        help="seconds between resolutions of dns:/// backends (default: %(default)s)",
    )
    p.add_argument(
        "--canary-weight",
        type=float,
        default=0.0,
        help="fraction of calls the canary answers, 0..1 (split mode)",
    )
    p.add_argument(
        "--mode",
        choices=["split", "shadow"],
        default="split",
        help="split: the canary answers a fraction of calls; shadow: stable answers all",
    )
    p.add_argument(
        "--sticky-key",
        choices=["series_id", "none"],
        default="series_id",
        help="route by the id of the call's first series (sticky) or at random",
    )
    p.add_argument(
        "--mirror-fraction",
        type=float,
        default=1.0,
        help="fraction of calls also sent to the other variant off the request path "
        "(dual-run / shadow copies), 0..1",
    )
    p.add_argument("--mirror-queue-size", type=int, default=1024, help="copies queued at most")
    p.add_argument("--mirror-timeout", type=float, default=5.0, help="deadline of a copy, s")
    p.add_argument(
        "--keepalive", type=float, default=2.0, help="seconds to notice a stalled backend"
    )
    p.add_argument("--grace", type=float, default=10.0, help="drain time on SIGTERM, seconds")
    p.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="on SIGTERM, NOT_SERVING for this long before draining, seconds",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="calls in progress at most; beyond it RESOURCE_EXHAUSTED at once (default: no limit)",
    )
    ctl = p.add_argument_group(
        "rollout controller (embedded; on when --registry and --model are given)"
    )
    ctl.add_argument("--registry", type=Path, help="registry whose aliases the controller moves")
    ctl.add_argument("--model", help="model name whose stable/canary aliases are rolled out")
    ctl.add_argument(
        "--state",
        type=Path,
        help="rollout state file, SQLite (default: REGISTRY/MODEL/rollouts.db)",
    )
    ctl.add_argument("--policy", type=Path, help="rollout policy, JSON (default: built in)")
    ctl.add_argument(
        "--admin-token-file",
        type=Path,
        help="admin token of the control API (default: $CANARYCAST_ADMIN_TOKEN)",
    )
    ctl.add_argument(
        "--viewer-token-file",
        type=Path,
        help="read-only token of the control API: status, history, watch "
        "(default: $CANARYCAST_VIEWER_TOKEN)",
    )
    ctl.add_argument("--otlp-port", type=int, help="also receive spans over OTLP/gRPC on this port")
    ctl.add_argument(
        "--desired-canary",
        type=Path,
        metavar="FILE",
        help="file naming the version to roll out (VERSION or NAME:VERSION), re-read every "
        "tick: a version not yet rolled out starts a rollout (the Helm chart's "
        "canary.model.version)",
    )
    p.add_argument(
        "--follow",
        metavar="HOST:PORT",
        help="take the canary weight from the router that runs the controller (replicas); "
        "the admin token comes from --admin-token-file or $CANARYCAST_ADMIN_TOKEN",
    )
    p.add_argument(
        "--observations",
        type=Path,
        help="store every accepted Observe point in this SQLite file, durably before the "
        "answer (off if unset; `canarycast drift` and `retrain` read it)",
    )
    p.add_argument(
        "--drift-interval",
        type=float,
        default=300.0,
        help="with the controller: seconds between updates of the stable model's online "
        "error gauge (default: %(default)s; the drift scores come from `canarycast drift "
        "--serve-metrics`)",
    )
    _workers_args(
        p,
        "router",
        "with --follow, one per core this process may use, all following the one controller "
        "(spans to its analyzer over OTLP: OTEL_EXPORTER_OTLP_ENDPOINT); else 1 (the embedded "
        "controller is one process)",
    )
    tls = p.add_argument_group("TLS on the router's port (Forecaster and RolloutControl)")
    tls.add_argument("--tls-cert", type=Path, help="server certificate, PEM")
    tls.add_argument("--tls-key", type=Path, help="server private key, PEM")
    tls.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)"
    )
    _tls_args(p, "--backend-tls", "TLS to the model servers (--stable, --canary)", server=False)
    _tls_args(p, "--otlp-tls", "TLS on the OTLP receiver's port (--otlp-port)", server=True)
    _tls_args(p, "--follow-tls", "TLS to the router followed (--follow)", server=False)
    _port_limit_args(p, "router")

    p = sub.add_parser("rollout", help="start, watch and steer canary rollouts")
    p.add_argument("--router", default="127.0.0.1:50050", help="router HOST:PORT")
    p.add_argument(
        "--token-file",
        type=Path,
        help="file holding the admin (or, to read only, the viewer) token "
        "(default: $CANARYCAST_ADMIN_TOKEN, else $CANARYCAST_VIEWER_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    _control_tls_args(p)
    rsub = p.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    start = rsub.add_parser("start", help="roll out a candidate version")
    start.add_argument("--candidate", required=True, help="NAME:VERSION")
    status = rsub.add_parser("status", help="where the rollout stands")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--watch", action="store_true", help="update live until it ends")
    status.add_argument(
        "--wait",
        action="store_true",
        help="block until it ends: exit 0 promoted, 1 rolled back (2: no rollout yet)",
    )
    promote = rsub.add_parser("promote", help="next step now")
    promote.add_argument("--full", action="store_true", help="straight to promoted")
    rollback = rsub.add_parser("rollback", help="weight 0 now; ends rolled back")
    rollback.add_argument("--reason", default="", help="recorded with the rollback")
    rsub.add_parser("abort", help="the same as rollback, reason 'aborted'")
    rsub.add_parser("pause", help="hold the weight; no automatic decision")
    rsub.add_parser("resume", help="continue; the current step restarts")
    weight = rsub.add_parser("set-weight", help="set the canary weight by hand (pauses)")
    weight.add_argument("percent", type=float, help="canary share of calls, 0..100")
    history = rsub.add_parser("history", help="past rollouts with outcome and reason")
    history.add_argument("--limit", type=int, default=20)

    p = sub.add_parser("models", help="list, show or alias registered model versions")
    _registry_arg(p)
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="every version with its aliases and offline scores")
    show = msub.add_parser("show", help="metadata of one version as JSON")
    show.add_argument("ref", help="NAME@ALIAS or NAME:VERSION")
    show.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the reference to exist (e.g. an init container "
        "waiting for the canary alias)",
    )
    alias = msub.add_parser("alias", help="point an alias at a version (atomic)")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version")

    p = sub.add_parser("forecast", help="one forecast call against a server or router")
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--values", type=_floats, help="history, comma-separated, oldest first")
    src.add_argument("--dataset", help="take the history from a bundled dataset or file")
    p.add_argument("--series-id", help="series id (with --dataset: which series)")
    p.add_argument("--end", type=int, help="with --dataset: history ends before this index")
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--quantiles", type=_floats, default=[], help="e.g. 0.1,0.9")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline, seconds")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    _tls_args(p, "--tls", "TLS to the server or router", server=False)

    from canarycast import health

    p = sub.add_parser("health", help="one grpc.health.v1 check (exec probes; TLS too)")
    health.add_arguments(p)

    _lifecycle_parsers(sub)

    p = sub.add_parser("demo", help="a canary promoted and one rolled back, live, on one machine")
    p.add_argument("--workdir", type=Path, default=Path(".cache/demo"), help="registry and cache")
    p.add_argument("--report", type=Path, help="report folder (default: WORKDIR/report)")
    p.add_argument("--quick", action="store_true", help="shorter rollouts (two steps), for tests")
    return parser


def _version() -> str:
    from canarycast import __version__

    return f"canarycast {__version__}"


def cmd_train(args: argparse.Namespace) -> int:
    from server.data import DataError, load_dataset
    from server.pipeline import config_for, train_and_register
    from server.registry import Registry
    from server.training import TrainParams

    try:
        dataset = load_dataset(args.dataset)
    except DataError as exc:
        print(f"canarycast train: {exc}", file=sys.stderr)
        return 2
    try:
        given: dict[str, Any] = {}
        if args.lookback is not None:
            given["lookback"] = args.lookback
        if args.horizon is not None:
            given["horizon"] = args.horizon
        if args.season_lengths is not None:
            given["season_length"] = args.season_lengths[0]
            given["extra_seasons"] = tuple(args.season_lengths[1:])
        config = config_for(
            dataset,
            **given,
            hidden=args.hidden,
            layers=args.layers,
            dropout=args.dropout,
            quantiles=tuple(args.quantiles),
        )
        params = TrainParams(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=args.patience,
            seed=args.seed,
            max_windows_per_epoch=args.max_windows_per_epoch,
            series_ids=tuple(args.series) if args.series else None,
            calibrate=not args.no_calibrate,
        )
    except ValueError as exc:
        print(f"canarycast train: {exc}", file=sys.stderr)
        return 2
    registry = Registry(args.registry)
    version = train_and_register(
        dataset, config, params, registry, args.name, progress=not args.no_progress
    )
    for alias in args.alias:
        registry.set_alias(args.name, alias, version.version)
    if args.json:
        print(json.dumps({"name": version.name, "version": version.version, **version.metadata}))
    else:
        print(f"registered {version.name}:{version.version}  ({args.registry})")
        for alias in args.alias:
            print(f"  alias {alias} -> {version.version}")
        for key, chosen in version.metadata.get("defaults", {}).items():
            print(f"  {key:<14} {chosen['value']}  ({chosen['why']})")
        print(format_scores(version.metadata.get("scores", {})))
    return 0


def format_scores(scores: dict[str, Any]) -> str:
    keys: list[str] = [k for k in ("mae", "rmse", "smape", "mase", "relmae_snaive") if k in scores]
    keys += sorted(k for k in scores if k.startswith("coverage"))
    lines = ["offline scores on the test split:"]
    for key in keys:
        lines.append(f"  {key:<18} {scores[key]:.4f}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from canarycast.telemetry import configure_tracing
    from canarycast.tls import server_tls_from_flags
    from canarycast.workers import worker_ports
    from server.app import ServerSettings, run, run_workers
    from server.registry import RegistryError

    if args.workers is None:
        args.workers = len(os.sched_getaffinity(0))
    try:
        worker_ports(args.workers, args.port, args.worker_port_base)  # refuses bad flags
        tls = server_tls_from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
        limits, rate_limit = _limits(args), _rate_limit(args)
    except ValueError as exc:
        print(f"canarycast serve: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        registry=args.registry,
        model=args.model,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        variant=args.variant,
        max_batch_size=args.max_batch_size,
        max_queue_delay=args.max_queue_delay_ms / 1000.0,
        max_queue_size=args.max_queue_size,
        reload_interval=args.reload_interval,
        grace=args.grace,
        drain_delay=args.drain_delay,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        tls=tls,
        limits=limits,
        rate_limit=rate_limit,
    )
    try:
        if args.workers > 1:  # forked before any gRPC object: tracing starts in each worker
            return run_workers(
                settings,
                args.workers,
                worker_port_base=args.worker_port_base,
                setup=lambda: configure_tracing("canarycast-server"),
            )
        configure_tracing("canarycast-server")
        return asyncio.run(run(settings))
    except (RegistryError, ValueError, OSError) as exc:
        print(f"canarycast serve: {exc}", file=sys.stderr)
        return 1


def _token_arg(path: Path | None, kind: str = "admin") -> Any:
    """The token of `--KIND-token-file` (followed when the file changes: a rotated
    Secret) or of its environment variable; None when neither is set."""
    from canarycast.tokens import Token, load_admin_token, load_viewer_token

    if path is None:
        return load_viewer_token(None) if kind == "viewer" else load_admin_token(None)
    value = load_viewer_token(path) if kind == "viewer" else load_admin_token(path)
    assert value is not None  # a token file is never empty (ValueError)
    return Token(value, path, what=f"{kind} token")


def cmd_route(args: argparse.Namespace) -> int:
    from canarycast.telemetry import configure_tracing
    from canarycast.tls import ServerTLS, client_tls_from_flags, server_tls_from_flags
    from canarycast.workers import worker_ports
    from router.app import ControllerSettings, RouterSettings, run, run_workers
    from router.controller import RolloutPolicy
    from router.routing import Mode, StickyKey
    from router.store import StateError

    try:
        controller = None
        tls = None
        if args.tls_cert is not None or args.tls_key is not None:
            if args.tls_cert is None or args.tls_key is None:
                raise ValueError("--tls-cert and --tls-key go together")
            tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)
        elif args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        otlp_tls = server_tls_from_flags(
            args.otlp_tls_cert, args.otlp_tls_key, args.otlp_tls_client_ca, "--otlp-tls"
        )
        if otlp_tls is not None and args.otlp_port is None:
            raise ValueError("--otlp-tls-cert/--otlp-tls-key need --otlp-port")
        backend_tls = client_tls_from_flags(
            args.backend_tls_ca, args.backend_tls_cert, args.backend_tls_key, "--backend-tls"
        )
        follow_tls = client_tls_from_flags(
            args.follow_tls_ca, args.follow_tls_cert, args.follow_tls_key, "--follow-tls"
        )
        limits, rate_limit = _limits(args), _rate_limit(args)
        if (args.registry is None) != (args.model is None):
            raise ValueError("--registry and --model go together (they turn the controller on)")
        default_workers = len(os.sched_getaffinity(0)) if args.follow else 1
        workers = args.workers if args.workers is not None else default_workers
        worker_ports(workers, args.port, args.worker_port_base)  # refuses bad flags
        if args.registry is not None:
            controller = ControllerSettings(
                registry=args.registry,
                model=args.model,
                state=args.state or args.registry / args.model / "rollouts.db",
                policy=RolloutPolicy.from_file(args.policy) if args.policy else RolloutPolicy(),
                admin_token=_token_arg(args.admin_token_file, "admin"),
                viewer_token=_token_arg(args.viewer_token_file, "viewer"),
                otlp_port=args.otlp_port,
                desired_canary=args.desired_canary,
                otlp_tls=otlp_tls,
            )
        settings = RouterSettings(
            stable=args.stable,
            canary=args.canary,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            canary_weight=args.canary_weight,
            mode=Mode(args.mode),
            sticky_key=StickyKey(args.sticky_key),
            mirror_fraction=args.mirror_fraction,
            mirror_queue_size=args.mirror_queue_size,
            mirror_timeout=args.mirror_timeout,
            keepalive=args.keepalive,
            grace=args.grace,
            drain_delay=args.drain_delay,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            dns_refresh=args.dns_refresh,
            controller=controller,
            tls=tls,
            follow=args.follow,
            # Following needs only to read: the viewer token is enough, and preferred.
            follow_token=(
                (_token_arg(args.viewer_token_file, "viewer") or _token_arg(args.admin_token_file))
                if args.follow
                else None
            ),
            follow_tls=follow_tls,
            backend_tls=backend_tls,
            limits=limits,
            rate_limit=rate_limit,
            observations=args.observations,
            drift_interval=args.drift_interval,
        )
        if workers > 1:  # forked before any gRPC object: tracing starts in each worker
            return run_workers(
                settings,
                workers,
                worker_port_base=args.worker_port_base,
                setup=lambda: configure_tracing("canarycast-router"),
            )
        return asyncio.run(run(settings, configure_tracing("canarycast-router")))
    except (ValueError, OSError, StateError) as exc:  # StateError: a corrupt state file
        print(f"canarycast route: {exc}", file=sys.stderr)
        return 1


def cmd_rollout(args: argparse.Namespace) -> int:
    import grpc

    from canarycast.rollout_client import (
        FINAL,
        RolloutClient,
        format_status,
        phase_name,
        status_dict,
    )
    from canarycast.tokens import load_admin_token, load_viewer_token
    from canarycast.v1 import rollout_pb2 as rpb

    try:
        token = load_admin_token(args.token_file) or load_viewer_token(None)
        credentials = _control_credentials(args)
    except ValueError as exc:
        print(f"canarycast rollout: {exc}", file=sys.stderr)
        return 2
    action = args.rollout_command
    with RolloutClient(args.router, token, timeout=args.timeout, credentials=credentials) as client:
        try:
            if action == "history":
                rows = [("ROLLOUT", "CANDIDATE", "STABLE BEFORE", "OUTCOME", "STARTED", "REASON")]
                for r in client.history(args.limit):
                    started = r.started_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
                    rows.append(
                        (
                            r.rollout_id,
                            r.candidate_version,
                            r.stable_version,
                            phase_name(r.phase),
                            started,
                            r.outcome_reason or "-",
                        )
                    )
                print(format_table(rows))
                return 0
            if action == "status" and (args.watch or args.wait):
                last = None
                for status in client.watch():
                    if status.phase in (rpb.IDLE, rpb.PHASE_UNSPECIFIED):
                        print("canarycast rollout: no rollout has run yet", file=sys.stderr)
                        return 2
                    if args.json:
                        print(json.dumps(status_dict(status)), flush=True)
                    elif args.watch:
                        print("\x1b[2J\x1b[H" + format_status(status), flush=True)
                    last = status
                    if status.phase in FINAL:
                        break
                if last is not None and args.wait and not (args.json or args.watch):
                    print(format_status(last))
                return 0 if last is not None and last.phase == rpb.PROMOTED else 1
            status = {
                "start": lambda: client.start(args.candidate),
                "status": client.status,
                "promote": lambda: client.promote(args.full),
                "rollback": lambda: client.rollback(args.reason),
                "abort": lambda: client.rollback("aborted"),
                "pause": client.pause,
                "resume": client.resume,
                "set-weight": lambda: client.set_weight(args.percent / 100.0),
            }[action]()
        except grpc.RpcError as exc:
            print(f"canarycast rollout: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(
        json.dumps(status_dict(status)) if getattr(args, "json", False) else format_status(status)
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from server.registry import Registry, RegistryError

    registry = Registry(args.registry)
    try:
        if args.models_command == "list":
            rows = [("MODEL", "VERSION", "ALIASES", "CREATED", "DATASET", "MASE")]
            for name in registry.models():
                aliases = registry.aliases(name)
                for v in registry.versions(name):
                    names = ",".join(sorted(a for a, ver in aliases.items() if ver == v.version))
                    mase = v.metadata.get("scores", {}).get("mase")
                    rows.append(
                        (
                            name,
                            v.version,
                            names or "-",
                            str(v.metadata.get("created_at", "-")),
                            str(v.metadata.get("dataset", "-")),
                            f"{mase:.3f}" if isinstance(mase, int | float) else "-",
                        )
                    )
            print(format_table(rows))
        elif args.models_command == "show":
            v = _resolve_waiting(registry, args.ref, args.wait)
            print(
                json.dumps(
                    {
                        "name": v.name,
                        "version": v.version,
                        "digest": v.digest,
                        "config": v.config,
                        "metadata": v.metadata,
                    },
                    indent=2,
                )
            )
        else:
            registry.set_alias(args.name, args.alias, args.version)
            print(f"{args.name}@{args.alias} -> {registry.get_alias(args.name, args.alias)}")
    except RegistryError as exc:
        print(f"canarycast models: {exc}", file=sys.stderr)
        return 1
    return 0


def _resolve_waiting(registry: Any, ref: str, wait: float) -> Any:
    """`registry.resolve(ref)`, retried every second for up to `wait` seconds."""
    import time

    from server.registry import RegistryError

    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return registry.resolve(ref)
        except RegistryError as exc:
            if time.monotonic() >= deadline:
                raise
            if not said:
                print(f"canarycast models: waiting for {ref}: {exc}", file=sys.stderr, flush=True)
                said = True
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def cmd_forecast(args: argparse.Namespace) -> int:
    import grpc

    from canarycast.client import ForecastClient, SeriesData

    start = None
    if args.values is not None:
        history, series_id = args.values, args.series_id or "series-0"
    else:
        from server.data import DataError, load_dataset

        try:
            dataset = load_dataset(args.dataset)
            series = dataset.get(args.series_id) if args.series_id else dataset.series[0]
        except (DataError, KeyError) as exc:
            print(f"canarycast forecast: {exc}", file=sys.stderr)
            return 2
        end = args.end if args.end is not None else len(series)
        history, series_id = series.values[:end], series.series_id
        start = series.timestamps[0]
    from canarycast.tls import client_tls_from_flags

    try:
        tls = client_tls_from_flags(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        print(f"canarycast forecast: {exc}", file=sys.stderr)
        return 2
    credentials = tls.credentials() if tls is not None else None
    with ForecastClient(args.target, timeout=args.timeout, credentials=credentials) as client:
        try:
            if start is not None:
                lookback = client.model_info().lookback
                offset = max(0, len(history) - lookback)
                history, start = history[offset:], series.timestamps[offset]
            [f] = client.forecast(
                [SeriesData(series_id, history, start=start)], args.horizon, args.quantiles
            )
        except grpc.RpcError as exc:
            print(f"canarycast forecast: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(
            json.dumps(
                {
                    "series_id": f.series_id,
                    "forecast_id": f.forecast_id,
                    "model": vars(f.model),
                    "timestamps": [str(t) for t in f.timestamps]
                    if f.timestamps is not None
                    else [],
                    "point": f.point.tolist(),
                    "quantiles": {str(q): v.tolist() for q, v in f.quantiles.items()},
                }
            )
        )
        return 0
    print(f"{f.series_id}  model {f.model.name}:{f.model.version} {f.model.variant}".rstrip())
    header = ["STEP", *(["TIME"] if f.timestamps is not None else []), "POINT"]
    header += [f"Q{q:g}" for q in f.quantiles]
    rows = [header]
    for i in range(len(f.point)):
        row = [str(i + 1)]
        if f.timestamps is not None:
            row.append(str(f.timestamps[i])[:19])
        row.append(f"{f.point[i]:.3f}")
        row += [f"{v[i]:.3f}" for v in f.quantiles.values()]
        rows.append(row)
    print(format_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from canarycast.demo import run_demo

    return run_demo(args.workdir, quick=args.quick, report_dir=args.report)


# -- model lifecycle: drift, retrain, the DVC pipeline's stages --------------------------


def _defaults(cls: Any) -> Any:
    """A dataclass's field defaults as attributes, without constructing (validating) it."""
    import dataclasses
    import types

    return types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(cls)})


def _lifecycle_parsers(sub: Any) -> None:
    from server.recipe import DriftPolicy

    drift = _defaults(DriftPolicy)

    def drift_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--observations", type=Path, required=True, help="observation store")
        p.add_argument("--reference", help="reference dataset (default: the stable lineage's)")
        p.add_argument("--recent-seasons", type=int, default=drift.recent_seasons)
        p.add_argument("--reference-seasons", type=int, default=drift.reference_seasons)
        p.add_argument("--psi-threshold", type=float, default=drift.psi_threshold)
        p.add_argument("--ks-threshold", type=float, default=drift.ks_threshold)
        p.add_argument("--performance-ratio", type=float, default=drift.performance_ratio)

    p = sub.add_parser("drift", help="data and performance drift of the stable model")
    _registry_arg(p)
    p.add_argument("--model", required=True, help="model name (its stable alias is checked)")
    drift_flags(p)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    exporter = p.add_argument_group(
        "exporter: check every --interval seconds and serve the scores on /metrics "
        "(canarycast_drift_*), until SIGTERM"
    )
    exporter.add_argument(
        "--serve-metrics",
        type=int,
        metavar="PORT",
        help="run as an exporter on this port (0: a free one) instead of checking once",
    )
    exporter.add_argument(
        "--interval", type=float, default=300.0, help="seconds between checks (default: 300)"
    )
    exporter.add_argument(
        "--metrics-host", default="127.0.0.1", help="where /metrics listens (default: 127.0.0.1)"
    )

    p = sub.add_parser("retrain", help="train a candidate on data + observations, canary it")
    _registry_arg(p)
    p.add_argument("--model", required=True, help="model name (compared with its stable alias)")
    drift_flags(p)
    p.add_argument("--workdir", type=Path, help="prepared data (default: REGISTRY/MODEL/retrain)")
    p.add_argument("--on-drift", action="store_true", help="do nothing unless drift is detected")
    p.add_argument("--dry-run", action="store_true", help="register, but start no rollout")
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed hold-out MASE excess")
    p.add_argument(
        "--holdout",
        type=int,
        help="most recent points held out to compare with stable (and as many before them "
        "for early stopping); default: 7 seasons",
    )
    p.add_argument("--router", default="127.0.0.1:50050", help="router HOST:PORT (control API)")
    p.add_argument("--token-file", type=Path, help="admin token (default: $CANARYCAST_ADMIN_TOKEN)")
    _control_tls_args(p)
    for flag in ("--lookback", "--horizon", "--hidden", "--layers", "--epochs", "--seed"):
        p.add_argument(flag, type=int, help="override the stable model's recipe")
    p.add_argument("--max-windows-per-epoch", type=int, help="override the stable model's recipe")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")

    p = sub.add_parser("pipeline", help="a stage of the DVC pipeline (dvc.yaml), without DVC")
    p.add_argument("stage", choices=["prepare", "train", "evaluate"])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters, YAML")
    p.add_argument("--out", type=Path, default=Path("pipeline-out"), help="outputs folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _control_tls_args(p: argparse.ArgumentParser) -> None:
    """The client side of the control API's TLS (`route --tls-*` on the controller)."""
    p.add_argument("--tls-ca", type=Path, help="use TLS, trusting this CA (PEM)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mTLS, PEM")
    p.add_argument("--tls-key", type=Path, help="client private key for mTLS, PEM")


def _control_credentials(args: argparse.Namespace) -> Any:
    """TLS credentials from --tls-ca/--tls-cert/--tls-key, or None for plaintext."""
    from canarycast.tls import channel_credentials

    if args.tls_ca is None and args.tls_cert is None and args.tls_key is None:
        return None
    return channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def _drift_policy(args: argparse.Namespace) -> Any:
    from server.drift import DriftPolicy

    return DriftPolicy(
        recent_seasons=args.recent_seasons,
        reference_seasons=args.reference_seasons,
        psi_threshold=args.psi_threshold,
        ks_threshold=args.ks_threshold,
        performance_ratio=args.performance_ratio,
    )


def _drift_report(args: argparse.Namespace) -> Any:
    from server.drift import stable_drift

    return stable_drift(
        args.observations, _registry(args), args.model, args.reference, _drift_policy(args)
    )


def _registry(args: argparse.Namespace) -> Any:
    from server.registry import Registry

    return Registry(args.registry)


def cmd_drift(args: argparse.Namespace) -> int:
    """Exit 0: no drift; 1: drift past a threshold; 2: cannot check.
    With --serve-metrics: an exporter until SIGTERM/SIGINT (exit 0), 2 for bad flags."""
    from server.data import DataError
    from server.registry import RegistryError

    if args.serve_metrics is not None:
        return _drift_exporter(args)
    try:
        report = _drift_report(args)
    except (DataError, RegistryError, OSError, ValueError, KeyError) as exc:
        print(f"canarycast drift: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), default=str) if args.json else report.format())
    return 1 if report.drifted else 0


def _drift_exporter(args: argparse.Namespace) -> int:
    """`canarycast drift --serve-metrics PORT`: the drift gauges, recomputed every
    --interval seconds from the registry and the store(s), on /metrics."""
    import signal
    import threading

    import structlog
    from prometheus_client import CollectorRegistry

    from canarycast.telemetry import serve_metrics
    from server.drift import DriftExporter, DriftGauges

    log = structlog.get_logger("canarycast.drift")
    if not 0 <= args.serve_metrics <= 65535:
        print(
            f"canarycast drift: --serve-metrics {args.serve_metrics}: not a port", file=sys.stderr
        )
        return 2
    try:
        exporter = DriftExporter(
            args.observations,
            _registry(args),
            args.model,
            DriftGauges(CollectorRegistry()),
            interval=args.interval,
            reference=args.reference,
            policy=_drift_policy(args),
        )
        endpoint = serve_metrics(exporter.gauges.registry, args.serve_metrics, args.metrics_host)
    except (ValueError, OSError) as exc:
        print(f"canarycast drift: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "serving",
        metrics_port=endpoint.port,
        model=args.model,
        observations=str(args.observations),
        interval=args.interval,
    )
    try:
        exporter.run(stop)
    finally:
        endpoint.close()
        log.info("stopped")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """Exit 0: registered (and a rollout started unless --dry-run), or --on-drift found none;
    1: the rollout could not start; 2: cannot run; 3: the candidate was worse (not registered)."""
    import grpc

    from canarycast.rollout_client import RolloutClient, format_status
    from canarycast.tokens import load_admin_token
    from server.data import DataError
    from server.model import build_model
    from server.registry import RegistryError
    from server.retrain import (
        compare_on_holdout,
        load_net,
        prepare_data,
        register_candidate,
        train_candidate,
    )
    from server.training import TrainParams

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    outcome: dict[str, Any] = {"model": args.model}
    try:
        token = None if args.dry_run else load_admin_token(args.token_file)
        credentials = _control_credentials(args)
        if args.on_drift:
            report = _drift_report(args)
            say(report.format())
            outcome["drift"] = report.to_dict()
            if not report.drifted:
                say("no drift: nothing to retrain")
                if args.json:
                    print(json.dumps({**outcome, "action": "none"}, default=str))
                return 0
        registry = _registry(args)
        stable = registry.resolve(f"{args.model}@stable")
        meta = stable.metadata
        base = args.reference or meta.get("retrain", {}).get("base_dataset") or meta["dataset"]
        workdir = args.workdir or args.registry / args.model / "retrain"
        prepared = prepare_data(base, args.observations, workdir / "data.parquet")
        say(
            f"data: {base} + {prepared.lineage['observations']['points']} stored observation(s) "
            f"-> {prepared.dataset.content_hash[:12]}"
        )
        recipe = dict(meta.get("parameters", {}))
        config_keys = ("lookback", "horizon", "hidden", "layers", "dropout", "quantiles")
        overrides = {k: recipe[k] for k in config_keys if k in recipe}
        train_keys = TrainParams().to_dict().keys()
        train_fields = {k: recipe[k] for k in train_keys if k in recipe and k != "series_ids"}
        for key in ("lookback", "horizon", "hidden", "layers"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        for key in ("epochs", "seed", "max_windows_per_epoch"):
            if getattr(args, key) is not None:
                train_fields[key] = getattr(args, key)
        if "quantiles" in overrides:
            overrides["quantiles"] = tuple(overrides["quantiles"])
        season = int(recipe.get("season_length") or prepared.dataset.season_length)
        holdout = args.holdout if args.holdout is not None else 7 * season
        train_fields["holdout_points"] = holdout
        params = TrainParams(**train_fields)
        result, seconds = train_candidate(
            prepared, overrides, params, progress=not args.no_progress
        )
        candidate_net = build_model(result.config, result.state_dict)
        comparison = compare_on_holdout(
            candidate_net,
            (stable.version, load_net(registry, args.model, stable.version)),
            prepared.dataset,
            args.tolerance,
            holdout,
        )
    except (DataError, RegistryError, OSError, ValueError, KeyError) as exc:
        print(f"canarycast retrain: {exc}", file=sys.stderr)
        return 2
    say(comparison.format())
    outcome["holdout"] = comparison.to_dict()
    if not comparison.not_worse:
        say("the candidate is worse than the stable model on the hold-out: not registered")
        if args.json:
            print(json.dumps({**outcome, "action": "rejected"}, default=str))
        return 3
    version = register_candidate(registry, args.model, prepared, result, seconds, comparison)
    outcome.update(version=version.version, lineage=version.metadata.get("retrain"))
    say(f"registered {args.model}:{version.version}")
    if args.dry_run or version.version == stable.version:
        outcome["action"] = "registered"
        say("dry run: no rollout started" if args.dry_run else "same as stable: no rollout")
        if args.json:
            print(json.dumps(outcome, default=str))
        return 0
    with RolloutClient(args.router, token, credentials=credentials) as client:
        try:
            status = client.start(f"{args.model}:{version.version}", actor="retrain")
        except grpc.RpcError as exc:
            print(f"canarycast retrain: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    outcome.update(action="rollout", rollout_id=status.rollout_id)
    say(format_status(status))
    if args.json:
        print(json.dumps(outcome, default=str))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from server import stages
    from server.data import DataError
    from server.registry import RegistryError

    try:
        params = stages.load_params(args.params)
        if args.stage == "prepare":
            result = stages.prepare(params, args.out)
        elif args.stage == "train":
            result = stages.train(params, args.out, progress=not args.no_progress)
        else:
            result = stages.evaluate(params, args.out)
    except (DataError, RegistryError, OSError, ValueError) as exc:
        print(f"canarycast pipeline {args.stage}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 SERVING, 1 answered but not SERVING, 2 no answer."""
    from canarycast import health

    return health.run(args)


#: The modules of the `server` extra (pyproject.toml) by import name: a base install
#: (`pip install canarycast`) lacks them.
SERVER_EXTRA = frozenset(
    {"torch", "pandas", "pyarrow", "vega_datasets", "tqdm", "matplotlib", "scipy", "yaml"}
)
#: What each command needs of the extra (checked before it runs, so a base install gets a
#: sentence, not a traceback). `forecast` needs it only with --dataset.
NEEDS_SERVER_EXTRA: dict[str, tuple[str, ...]] = {
    "train": ("torch", "pandas", "tqdm", "vega_datasets"),
    "serve": ("torch", "pandas"),
    "drift": ("torch", "pandas", "scipy", "vega_datasets"),
    "retrain": ("torch", "pandas", "scipy", "tqdm", "vega_datasets"),
    "pipeline": ("torch", "pandas", "yaml", "tqdm", "vega_datasets"),
    "demo": ("torch", "pandas", "matplotlib", "scipy", "vega_datasets"),
    "forecast --dataset": ("pandas", "vega_datasets"),
}


def missing_server_extra(args: argparse.Namespace) -> str | None:
    """The first module of the server extra that the command needs and cannot import."""
    import importlib.util

    command = args.command
    if command == "forecast" and getattr(args, "dataset", None) is not None:
        command = "forecast --dataset"
    for module in NEEDS_SERVER_EXTRA.get(command, ()):
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _needs_server_extra(command: str, module: str) -> int:
    print(
        f"canarycast {command}: needs the server extra: pip install 'canarycast[server]' "
        f"(no module named {module!r})",
        file=sys.stderr,
    )
    return 2


COMMANDS = {
    "train": cmd_train,
    "serve": cmd_serve,
    "route": cmd_route,
    "rollout": cmd_rollout,
    "models": cmd_models,
    "forecast": cmd_forecast,
    "demo": cmd_demo,
    "drift": cmd_drift,
    "retrain": cmd_retrain,
    "pipeline": cmd_pipeline,
    "health": cmd_health,
}


def main(argv: Sequence[str] | None = None) -> int:
    from canarycast.telemetry import configure_logging

    args = build_parser().parse_args(argv)
    missing = missing_server_extra(args)
    if missing is not None:
        return _needs_server_extra(args.command, missing)
    configure_logging()
    try:
        return COMMANDS[args.command](args)
    except ModuleNotFoundError as exc:  # one the table above does not name
        top = (exc.name or "").partition(".")[0]
        if top not in SERVER_EXTRA:
            raise
        return _needs_server_extra(args.command, top)


if __name__ == "__main__":
    sys.exit(main())
