"""`canarycast route`: a router, with the embedded controller or following one."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from cli.commands.flags import (
    limits_from_flags,
    port_limit_args,
    rate_limit_from_flags,
    shutdown_args,
    tls_args,
    token_arg,
    workers_args,
)


def add_parsers(sub: Any) -> None:
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
        help="fraction of sampled calls also sent to the other variant off the request "
        "path (dual-run / shadow copies), 0..1",
    )
    p.add_argument(
        "--analysis-fraction",
        type=float,
        default=1.0,
        help="share of series in the canary analysis, 0..1: a sample by a hash of the "
        "series id (the same on every router); its calls get dual-run copies and forecast "
        "records, the others are routed and counted only (default: %(default)s)",
    )
    p.add_argument("--mirror-queue-size", type=int, default=1024, help="copies queued at most")
    p.add_argument("--mirror-timeout", type=float, default=5.0, help="deadline of a copy, s")
    p.add_argument(
        "--join-after",
        type=int,
        default=4,
        help="calls in flight per backend replica before further calls wait and are joined "
        "into multi-series calls (0: never join)",
    )
    p.add_argument("--join-max", type=int, default=64, help="series per joined call at most")
    p.add_argument(
        "--mirror-batch",
        type=int,
        default=64,
        help="series per mirror call at most: copies that wait are joined into one call",
    )
    p.add_argument(
        "--keepalive", type=float, default=2.0, help="seconds to notice a stalled backend"
    )
    shutdown_args(p)
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
    workers_args(
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
    tls_args(p, "--backend-tls", "TLS to the model servers (--stable, --canary)", server=False)
    tls_args(p, "--otlp-tls", "TLS on the OTLP receiver's port (--otlp-port)", server=True)
    tls_args(p, "--follow-tls", "TLS to the router followed (--follow)", server=False)
    port_limit_args(p, "router")


def cmd_route(args: argparse.Namespace) -> int:
    from canarycast.telemetry import configure_tracing
    from canarycast.tls import ServerTLS, client_tls_from_flags, server_tls_from_flags
    from canarycast.workers import worker_ports
    from router.app import ControllerSettings, RouterSettings, run, run_workers
    from router.rollout.controller import RolloutPolicy
    from router.rollout.store import StateError
    from router.traffic.routing import Mode, StickyKey

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
        limits, rate_limit = limits_from_flags(args), rate_limit_from_flags(args)
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
                admin_token=token_arg(args.admin_token_file, "admin"),
                viewer_token=token_arg(args.viewer_token_file, "viewer"),
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
            analysis_fraction=args.analysis_fraction,
            mirror_queue_size=args.mirror_queue_size,
            mirror_batch=args.mirror_batch,
            join_after=args.join_after,
            join_max=args.join_max,
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
                (token_arg(args.viewer_token_file, "viewer") or token_arg(args.admin_token_file))
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
