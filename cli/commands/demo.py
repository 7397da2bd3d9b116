"""`canarycast demo`: a canary promoted and one rolled back, live, on one machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("demo", help="a canary promoted and one rolled back, live, on one machine")
    p.add_argument("--workdir", type=Path, default=Path(".cache/demo"), help="registry and cache")
    p.add_argument("--report", type=Path, help="report folder (default: WORKDIR/report)")
    p.add_argument("--quick", action="store_true", help="shorter rollouts (two steps), for tests")


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    return run_demo(args.workdir, quick=args.quick, report_dir=args.report)
