"""`make bench`: all seven benchmark sections, one after another, in one run.

    python -m bench.run                 # full run -> bench/results/
    python -m bench.run --smoke --out DIR --registry R --model NAME:VERSION
    python -m bench.run --sections serving,router

Without --model, the default recipe (`canarycast train` defaults) is trained on
seattle-temps into .cache/bench/registry once and reused. Each section writes
OUT/<section>.json; then OUT/machine.json, OUT/README.md (the tables) and the plots.
A failing section is recorded with its error and the run goes on; the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import CACHE, RESULTS, BenchModel, machine, write_json

SECTIONS = ("serving", "peer", "router", "sample", "analysis", "growth", "accuracy", "judge")


def default_model() -> BenchModel:
    """The default recipe on seattle-temps, trained once and reused by its recipe key."""
    from server.lifecycle.data import load_dataset
    from server.lifecycle.pipeline import config_for, find_by_recipe, recipe_key, train_and_register
    from server.lifecycle.registry import Registry
    from server.lifecycle.training import TrainParams

    root = CACHE / "registry"
    registry = Registry(root)
    dataset = load_dataset("seattle-temps")
    config, params = config_for(dataset), TrainParams()
    version = find_by_recipe(registry, "bench", recipe_key(dataset, config, params))
    if version is None:
        version = train_and_register(dataset, config, params, registry, "bench")
    return BenchModel(root, f"bench:{version.version}")


def run(
    sections: tuple[str, ...], out: Path, model: BenchModel | None, *, smoke: bool
) -> dict[str, Any]:
    from tqdm import tqdm

    from bench import accuracy, analysis_cost, judge_world, peer, report, router_cost, serving

    started = time.perf_counter()
    about = machine()
    needs_model = {"serving", "peer", "router", "sample", "growth"} & set(sections)
    if model is None and needs_model:
        model = default_model()
    given = model

    def served() -> BenchModel:
        assert given is not None  # made above for every section that serves one
        return given

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "serving": lambda: serving.serving_section(served(), smoke=smoke),
        "peer": lambda: peer.peer_section(served(), smoke=smoke),
        "router": lambda: router_cost.router_section(served(), smoke=smoke),
        "sample": lambda: router_cost.sample_section(served(), smoke=smoke),
        "analysis": lambda: analysis_cost.analysis_section(smoke=smoke),
        "growth": lambda: serving.growth_section(served(), smoke=smoke),
        "accuracy": lambda: accuracy.accuracy_section(smoke=smoke),
        "judge": lambda: judge_world.judge_section(smoke=smoke),
    }
    results: dict[str, Any] = {}
    bar = tqdm(sections, desc="bench", unit="section", file=sys.stderr)
    for name in bar:
        bar.set_postfix(section=name)
        t = time.perf_counter()
        try:
            result = runners[name]()
        except Exception as exc:  # record it, run the other sections
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = time.perf_counter() - t
        result["smoke"] = smoke
        if model is not None:
            result.setdefault("model", model.ref)
        results[name] = result
        write_json(out / f"{name}.json", result)
    total = time.perf_counter() - started
    about["total_seconds"] = total
    about["sections"] = {k: v["seconds"] for k, v in results.items()}
    write_json(out / "machine.json", about)
    # The tables cover every section with results in `out`, not only those run now.
    shown = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in SECTIONS
        if (out / f"{name}.json").exists()
    }
    ok = {name: r for name, r in shown.items() if "error" not in r}
    report.plots(ok, out)
    text = report.markdown(ok, about, total)
    if "judge" in ok:  # its table and plot live beside its world
        judge_world.plot(ok["judge"], out)
        text += "\n\n" + judge_world.markdown(ok["judge"])
    failed = [f"- **{name}**: {r['error']}" for name, r in shown.items() if "error" in r]
    if failed:  # a failed section is reported as such, never left out silently
        text += "\n\n## Sections that failed\n\n" + "\n".join(failed)
    (out / "README.md").write_text(text + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="canarycast benchmarks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds per section")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--registry", type=Path, help="registry of --model")
    parser.add_argument("--model", help="NAME:VERSION to serve (default: train the default)")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if (args.registry is None) != (args.model is None):
        parser.error("--registry and --model go together")
    model = BenchModel(args.registry, args.model) if args.model else None
    results = run(sections, args.out, model, smoke=args.smoke)
    failed = [k for k, v in results.items() if "error" in v]
    print(f"results in {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
