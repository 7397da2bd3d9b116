"""`canarycast` command line: the composition root of every process.

    canarycast train     train an LSTM on real data and register it     (commands/model.py)
    canarycast serve     run a model server                             (commands/model.py)
    canarycast route     run a router in front of stable and canary     (commands/route.py)
    canarycast rollout   start, watch and steer canary rollouts         (commands/client.py)
    canarycast models    list / show / alias registered versions        (commands/client.py)
    canarycast forecast  one-off forecast call against a server/router  (commands/client.py)
    canarycast health    one grpc.health.v1 check                       (commands/client.py)
    canarycast drift     drift of the stable model; --serve-metrics     (commands/lifecycle.py)
    canarycast retrain   a candidate from data + observations, canaried (commands/lifecycle.py)
    canarycast pipeline  a stage of the DVC pipeline                    (commands/lifecycle.py)
    canarycast demo      the whole story on one machine                 (commands/demo.py)

This module builds the parser from the groups, refuses a command whose `server` extra is
not installed (with a sentence, exit 2), and configures logging once before it runs;
shared flag groups live in `cli.commands.flags`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli.commands import client, demo, lifecycle, model, route
from cli.commands.flags import limits_from_flags as _limits
from cli.commands.flags import rate_limit_from_flags as _rate_limit
from cli.commands.flags import version

__all__ = [
    "COMMANDS",
    "NEEDS_SERVER_EXTRA",
    "SERVER_EXTRA",
    "_limits",
    "_rate_limit",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canarycast",
        description="LSTM time-series forecasts over gRPC, shipped safely with canaries.",
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (model, route, client, lifecycle, demo):  # the order of --help
        group.add_parsers(sub)
    return parser


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
    "train": model.cmd_train,
    "serve": model.cmd_serve,
    "route": route.cmd_route,
    "rollout": client.cmd_rollout,
    "models": client.cmd_models,
    "forecast": client.cmd_forecast,
    "demo": demo.cmd_demo,
    "drift": lifecycle.cmd_drift,
    "retrain": lifecycle.cmd_retrain,
    "pipeline": lifecycle.cmd_pipeline,
    "health": client.cmd_health,
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
