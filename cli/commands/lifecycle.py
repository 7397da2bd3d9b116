"""The model lifecycle's commands: `drift` (once, or an exporter of its gauges),
`retrain`, and the DVC pipeline's stages (`pipeline`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.commands.flags import (
    control_credentials,
    control_tls_args,
    defaults,
    open_registry,
    registry_arg,
)


def add_parsers(sub: Any) -> None:
    from server.lifecycle.recipe import DriftPolicy

    drift = defaults(DriftPolicy)

    def drift_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--observations", type=Path, required=True, help="observation store")
        p.add_argument("--reference", help="reference dataset (default: the stable lineage's)")
        p.add_argument("--recent-seasons", type=int, default=drift.recent_seasons)
        p.add_argument("--reference-seasons", type=int, default=drift.reference_seasons)
        p.add_argument("--psi-threshold", type=float, default=drift.psi_threshold)
        p.add_argument("--ks-threshold", type=float, default=drift.ks_threshold)
        p.add_argument("--performance-ratio", type=float, default=drift.performance_ratio)

    p = sub.add_parser("drift", help="data and performance drift of the stable model")
    registry_arg(p)
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
    exporter.add_argument("--interval", type=float, help="seconds between checks (default: 300)")
    exporter.add_argument("--metrics-host", help="where /metrics listens (default: 127.0.0.1)")

    p = sub.add_parser("retrain", help="train a candidate on data + observations, canary it")
    registry_arg(p)
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
    control_tls_args(p)
    for flag in (
        "--lookback",
        "--horizon",
        "--hidden",
        "--layers",
        "--members",
        "--epochs",
        "--seed",
    ):
        p.add_argument(flag, type=int, help="override the stable model's recipe")
    p.add_argument("--max-windows-per-epoch", type=int, help="override the stable model's recipe")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")

    p = sub.add_parser("pipeline", help="a stage of the DVC pipeline (dvc.yaml), without DVC")
    p.add_argument("stage", choices=["prepare", "train", "evaluate"])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters, YAML")
    p.add_argument("--out", type=Path, default=Path("pipeline-out"), help="outputs folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _drift_policy(args: argparse.Namespace) -> Any:
    from server.lifecycle.drift import DriftPolicy

    return DriftPolicy(
        recent_seasons=args.recent_seasons,
        reference_seasons=args.reference_seasons,
        psi_threshold=args.psi_threshold,
        ks_threshold=args.ks_threshold,
        performance_ratio=args.performance_ratio,
    )


def _drift_report(args: argparse.Namespace) -> Any:
    from server.lifecycle.drift import stable_drift

    return stable_drift(
        args.observations, open_registry(args), args.model, args.reference, _drift_policy(args)
    )


def cmd_drift(args: argparse.Namespace) -> int:
    """Exit 0: no drift; 1: drift past a threshold; 2: cannot check.
    With --serve-metrics: an exporter until SIGTERM/SIGINT (exit 0), 2 for bad flags."""
    from server.lifecycle.data import DataError
    from server.lifecycle.registry import RegistryError

    exporter_only = [
        flag
        for flag, value in (("--interval", args.interval), ("--metrics-host", args.metrics_host))
        if value is not None
    ]
    if args.serve_metrics is None and exporter_only:
        print(f"canarycast drift: {exporter_only[0]} needs --serve-metrics", file=sys.stderr)
        return 2
    if args.serve_metrics is not None and args.json:
        print(
            "canarycast drift: --json prints one report; not with --serve-metrics", file=sys.stderr
        )
        return 2
    if args.serve_metrics is not None:
        args.interval = 300.0 if args.interval is None else args.interval
        args.metrics_host = args.metrics_host or "127.0.0.1"
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
    from server.lifecycle.drift import DriftExporter, DriftGauges

    log = structlog.get_logger("canarycast.drift")
    if not 0 <= args.serve_metrics <= 65535:
        print(
            f"canarycast drift: --serve-metrics {args.serve_metrics}: not a port", file=sys.stderr
        )
        return 2
    try:
        exporter = DriftExporter(
            args.observations,
            open_registry(args),
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
    from server.lifecycle.data import DataError
    from server.lifecycle.model import build_model
    from server.lifecycle.registry import RegistryError
    from server.lifecycle.retrain import (
        compare_on_holdout,
        load_net,
        prepare_data,
        register_candidate,
        train_candidate,
    )
    from server.lifecycle.training import TrainParams

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    outcome: dict[str, Any] = {"model": args.model}
    try:
        token = None if args.dry_run else load_admin_token(args.token_file)
        credentials = control_credentials(args)
        if args.on_drift:
            report = _drift_report(args)
            say(report.format())
            outcome["drift"] = report.to_dict()
            if not report.drifted:
                say("no drift: nothing to retrain")
                if args.json:
                    print(json.dumps({**outcome, "action": "none"}, default=str))
                return 0
        registry = open_registry(args)
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
        # The stable model's seed members: absent from its recipe means one (to_dict
        # leaves members out at 1), not today's default.
        overrides["members"] = recipe.get("members", 1)
        train_keys = TrainParams().to_dict().keys()
        train_fields = {k: recipe[k] for k in train_keys if k in recipe and k != "series_ids"}
        for key in ("lookback", "horizon", "hidden", "layers", "members"):
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
    from server.lifecycle import stages
    from server.lifecycle.data import DataError
    from server.lifecycle.registry import RegistryError

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
