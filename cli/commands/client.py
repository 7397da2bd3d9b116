"""The commands of a client install: `rollout`, `models`, `forecast`, `health`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cli.commands.flags import (
    control_credentials,
    control_tls_args,
    floats,
    format_table,
    registry_arg,
    tls_args,
)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("rollout", help="start, watch and steer canary rollouts")
    p.add_argument("--router", default="127.0.0.1:50050", help="router HOST:PORT")
    p.add_argument(
        "--token-file",
        type=Path,
        help="file holding the admin (or, to read only, the viewer) token "
        "(default: $CANARYCAST_ADMIN_TOKEN, else $CANARYCAST_VIEWER_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    control_tls_args(p)
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
    registry_arg(p)
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
    src.add_argument("--values", type=floats, help="history, comma-separated, oldest first")
    src.add_argument("--dataset", help="take the history from a bundled dataset or file")
    p.add_argument("--series-id", help="series id (with --dataset: which series)")
    p.add_argument("--end", type=int, help="with --dataset: history ends before this index")
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--quantiles", type=floats, default=[], help="e.g. 0.1,0.9")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline, seconds")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    tls_args(p, "--tls", "TLS to the server or router", server=False)

    from canarycast import health

    p = sub.add_parser("health", help="one grpc.health.v1 check (exec probes; TLS too)")
    health.add_arguments(p)


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
        credentials = control_credentials(args)
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
    from server.lifecycle.registry import Registry, RegistryError

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

    from server.lifecycle.registry import RegistryError

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


def cmd_forecast(args: argparse.Namespace) -> int:
    import grpc

    from canarycast.client import ForecastClient, SeriesData

    start = None
    if args.values is not None:
        history, series_id = args.values, args.series_id or "series-0"
    else:
        from server.lifecycle.data import DataError, load_dataset

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


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 SERVING, 1 answered but not SERVING, 2 no answer."""
    from canarycast import health

    return health.run(args)


#: The modules of the `server` extra (pyproject.toml) by import name: a base install
#: (`pip install canarycast`) lacks them.
