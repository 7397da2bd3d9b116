"""Flag groups and value parsers the commands share (registry, TLS, ports and limits,
workers, the control API's credentials and tokens)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from canarycast.environment import CANARYCAST_REGISTRY

DEFAULT_REGISTRY = "registry"


def registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=Path(os.environ.get(CANARYCAST_REGISTRY, DEFAULT_REGISTRY)),
        help=f"registry directory (default: ${CANARYCAST_REGISTRY} or ./{DEFAULT_REGISTRY})",
    )


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {exc}") from exc


def season_lengths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {exc}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def port_limit_args(parser: argparse.ArgumentParser, what: str) -> None:
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


def tls_args(parser: argparse.ArgumentParser, prefix: str, title: str, *, server: bool) -> None:
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


def shutdown_args(parser: argparse.ArgumentParser) -> None:
    """How a serving process (server or router) drains on SIGTERM and bounds its calls."""
    p = parser
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


def workers_args(parser: argparse.ArgumentParser, what: str, default: str) -> None:
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


def rate_limit_from_flags(args: argparse.Namespace) -> Any:
    """The `RateLimit` of `_port_limit_args`' flags, or None (off)."""
    from canarycast.grpc_server import RateLimit

    if args.rate_limit is None:
        if args.rate_burst is not None:
            raise ValueError("--rate-burst needs --rate-limit")
        return None
    burst = args.rate_burst if args.rate_burst is not None else max(1, round(args.rate_limit))
    return RateLimit(args.rate_limit, burst, per_peer=args.rate_limit_scope == "peer")


def limits_from_flags(args: argparse.Namespace) -> Any:
    from canarycast.validation import Limits

    if args.max_message_bytes < 1024:
        raise ValueError(f"--max-message-bytes must be at least 1024, got {args.max_message_bytes}")
    return Limits(max_message_bytes=args.max_message_bytes)


def control_tls_args(p: argparse.ArgumentParser) -> None:
    """The client side of the control API's TLS (`route --tls-*` on the controller)."""
    p.add_argument("--tls-ca", type=Path, help="use TLS, trusting this CA (PEM)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mTLS, PEM")
    p.add_argument("--tls-key", type=Path, help="client private key for mTLS, PEM")


def control_credentials(args: argparse.Namespace) -> Any:
    """TLS credentials from --tls-ca/--tls-cert/--tls-key, or None for plaintext."""
    from canarycast.tls import channel_credentials

    if args.tls_ca is None and args.tls_cert is None and args.tls_key is None:
        return None
    return channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def token_arg(path: Path | None, kind: str = "admin") -> Any:
    """The token of `--KIND-token-file` (followed when the file changes: a rotated
    Secret) or of its environment variable; None when neither is set."""
    from canarycast.tokens import Token, load_admin_token, load_viewer_token

    if path is None:
        return load_viewer_token(None) if kind == "viewer" else load_admin_token(None)
    value = load_viewer_token(path) if kind == "viewer" else load_admin_token(path)
    assert value is not None  # a token file is never empty (ValueError)
    return Token(value, path, what=f"{kind} token")


def open_registry(args: argparse.Namespace) -> Any:
    from server.lifecycle.registry import Registry

    return Registry(args.registry)


def defaults(cls: Any) -> Any:
    """A dataclass's field defaults as attributes, without constructing (validating) it."""
    import dataclasses
    import types

    return types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(cls)})


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def version() -> str:
    from canarycast import __version__

    return f"canarycast {__version__}"
