"""`canarycast train` and `canarycast serve`: a model version made, and served."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from typing import Any

from cli.commands.flags import (
    defaults,
    floats,
    limits_from_flags,
    port_limit_args,
    rate_limit_from_flags,
    registry_arg,
    season_lengths,
    shutdown_args,
    tls_args,
    workers_args,
)


def add_parsers(sub: Any) -> None:
    # Defaults read off the dataclasses, none built: no torch, no pandas, a fast start.
    from server.lifecycle.recipe import DEFAULT_MEMBERS, ModelConfig, TrainParams

    config, params = defaults(ModelConfig), defaults(TrainParams)
    p = sub.add_parser("train", help="train an LSTM on real data and register it")
    p.add_argument(
        "--dataset",
        required=True,
        help="bundled dataset (seattle-temps, sf-temps, seattle-weather, us-employment) "
        "or a CSV/Parquet file in long format (unique_id, ds, y)",
    )
    registry_arg(p)
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
        type=season_lengths,
        help="seasons in steps, comma-separated, shortest first (the first scales MASE); "
        "default: from the frequency, e.g. 24,168 for hourly data",
    )
    p.add_argument("--hidden", type=int, default=config.hidden, help="LSTM hidden units")
    p.add_argument("--layers", type=int, default=config.layers, help="LSTM layers")
    p.add_argument(
        "--members",
        type=int,
        default=DEFAULT_MEMBERS,
        help="seed members (seeds --seed, --seed + 1, ...) served as one network, their "
        "quantiles averaged (default: %(default)s)",
    )
    p.add_argument("--dropout", type=float, default=config.dropout)
    p.add_argument(
        "--quantiles",
        type=floats,
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
    p.add_argument(
        "--search-budget",
        type=float,
        metavar="SECONDS",
        help="also train the recipe's variants (every window per epoch, twice the epochs, "
        "three seed members) that fit in this many seconds, and keep the best on "
        "validation (default: off, the recipe as given)",
    )
    p.add_argument("--alias", action="append", default=[], help="point this alias at the result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the registered version as JSON")

    p = sub.add_parser("serve", help="run a model server")
    registry_arg(p)
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
    shutdown_args(p)
    workers_args(
        p, "server", "one per core this process may use; routers dial each worker's own port"
    )
    tls_args(p, "--tls", "TLS on the server's port", server=True)
    port_limit_args(p, "server")


def cmd_train(args: argparse.Namespace) -> int:
    from server.lifecycle.data import DataError, load_dataset
    from server.lifecycle.pipeline import config_for, train_and_register
    from server.lifecycle.registry import Registry
    from server.lifecycle.training import TrainParams

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
            members=args.members,
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
        budget = args.search_budget
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"--search-budget must be a number of seconds > 0, got {budget}")
    except ValueError as exc:
        print(f"canarycast train: {exc}", file=sys.stderr)
        return 2
    registry = Registry(args.registry)
    version = train_and_register(
        dataset,
        config,
        params,
        registry,
        args.name,
        progress=not args.no_progress,
        search_budget=budget,
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
        search = version.metadata.get("recipe_search")
        if search:
            print(format_search(search))
        print(format_scores(version.metadata.get("scores", {})))
    return 0


def format_scores(scores: dict[str, Any]) -> str:
    keys: list[str] = [k for k in ("mae", "rmse", "smape", "mase", "relmae_snaive") if k in scores]
    keys += sorted(k for k in scores if k.startswith("coverage"))
    lines = ["offline scores on the test split:"]
    for key in keys:
        lines.append(f"  {key:<18} {scores[key]:.4f}")
    return "\n".join(lines)


def format_search(search: dict[str, Any]) -> str:
    """The recipe search of a registered version: each candidate and the one kept."""
    lines = [
        f"recipe search within {search['budget_seconds']:g} s: kept {search['chosen']!r} "
        "(lowest validation MASE)"
    ]
    for c in search["candidates"]:
        if "val_mase" in c:
            what = f"validation MASE {c['val_mase']:.4f}, {c['train_seconds']:.1f} s"
        else:
            what = c["status"]
        lines.append(f"  {c['name']:<12} {what}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from canarycast.telemetry import configure_tracing
    from canarycast.tls import server_tls_from_flags
    from canarycast.workers import worker_ports
    from server.lifecycle.registry import RegistryError
    from server.serving.app import ServerSettings, run, run_workers

    if args.workers is None:
        args.workers = len(os.sched_getaffinity(0))
    try:
        worker_ports(args.workers, args.port, args.worker_port_base)  # refuses bad flags
        tls = server_tls_from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
        limits, rate_limit = limits_from_flags(args), rate_limit_from_flags(args)
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
