"""The results as a person reads them: a markdown table per section and the plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _runs_table(runs: list[dict[str, Any]]) -> list[str]:
    return _table(
        [
            "scenario",
            "forecasts/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU (cores)",
            "load generator CPU (cores)",
        ],
        [
            [
                r["name"],
                r["forecasts_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r.get("server_cpu_cores"),
                r.get("loadgen_cpu_cores"),
            ]
            for r in runs
        ],
    )


def _workers_table(rows: list[dict[str, Any]]) -> list[str]:
    return _table(
        [
            "server",
            "workers",
            "concurrency",
            "series per call",
            "forecasts/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU (cores)",
        ],
        [
            [
                r.get("peer", "canarycast"),
                r["workers"],
                r["concurrency"],
                r.get("series_per_call", 1),
                r["forecasts_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                r["server_cpu_cores"],
            ]
            for r in rows
        ],
    )


def _ratios(ratios: dict[str, float]) -> list[str]:
    return _table(["ratio (same run)", "value"], [[k, v] for k, v in ratios.items()])


def accuracy_table(acc: dict[str, Any]) -> list[str]:
    names = ["LSTM", "seasonal naive", "AutoETS", "AutoARIMA", "MSTL"]
    rows = []
    for r in acc["rows"]:
        for name in names:
            s = r["models"].get(name)
            if s is None:
                continue
            rows.append(
                [
                    r["dataset"],
                    f"{r['forecasts']} x {r['horizon']}",
                    name,
                    s["mase"],
                    s.get("relmae_snaive"),
                    s.get("pinball_scaled"),
                    s["coverage_80"],
                    r["lstm_train_seconds"] if name == "LSTM" else r["stats_seconds"].get(name),
                ]
            )
    out = _table(
        [
            "dataset",
            "forecasts x horizon",
            "model",
            "MASE",
            "MAE / seasonal naive",
            "scaled pinball",
            "80 % coverage",
            "seconds (train / fit + forecast)",
        ],
        rows,
    )
    paired = []
    for r in acc["rows"]:
        for name, d in r.get("paired_mase_difference", {}).items():
            paired.append([r["dataset"], name, d["mean"], f"[{d['lower']:.3f}, {d['upper']:.3f}]"])
    out += [
        "Paired MASE difference per forecast window, LSTM minus baseline (negative: the LSTM "
        "is better), with a 95 % bootstrap interval (series drawn with replacement; within "
        "each, moving blocks of windows as long as a horizon):",
        "",
        *_table(["dataset", "baseline", "mean difference", "95 % interval"], paired),
    ]
    uncal = [
        [
            r["dataset"],
            r["models"]["LSTM"].get("coverage_80_uncalibrated"),
            r["models"]["LSTM"]["coverage_80"],
        ]
        for r in acc["rows"]
    ]
    out += _table(["dataset", "LSTM coverage, raw head", "LSTM coverage, calibrated"], uncal)
    out += [
        f"![{r['dataset']}: one week](accuracy_week_{r['dataset']}.png)"
        for r in acc["rows"]
        if "week" in r
    ]
    return [*out, ""]


def markdown(results: dict[str, Any], machine: dict[str, Any], total_seconds: float) -> str:
    out = [
        "# canarycast benchmark results",
        "",
        f"Written by `make bench` in {total_seconds:.0f} s. Machine: {machine['cores']} cores, "
        f"{machine['cpu_model']}, {machine['memory_gib']} GiB; load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}; torch "
        f"{machine['torch']} with {machine['torch_threads']} threads. {machine['note']}.",
        "",
        "The load generator is a separate process (grpc.aio, N concurrent callers on one "
        "channel; TorchServe: one HTTP/1.1 keep-alive connection per caller); its own CPU "
        "is reported next to each figure. Raw figures: the JSON files beside this one.",
        "",
    ]
    s = results.get("serving")
    if s:
        out += ["## 1. Model server against the compute limit", ""]
        out += _table(
            ["batch", "bare forward ms", "forecasts/s (bare forward)", "forecasts/s (predict)"],
            [
                [
                    r["batch"],
                    r["forward_ms"],
                    r["forward_forecasts_per_s"],
                    r["predict_forecasts_per_s"],
                ]
                for r in s["roofline"]["rows"]
            ],
        )
        out += _runs_table(s["runs"])
        if s.get("workers"):
            out += [
                "Worker processes: the same load over each worker's own port, from "
                "load generators side by side (forecasts/s summed, p99 the worst).",
                "",
            ]
            out += _workers_table(s["workers"])
        out += _ratios(s["ratios"])
    p = results.get("peer")
    if p:
        out += ["## 2. Model server against TorchServe", ""]
        if p.get("torchserve_error"):
            out += ["TorchServe could not run here:", "", "```", p["torchserve_error"], "```", ""]
        out += [
            f"Handler check (in process, against the server's predict): {p['handler_check']}.",
            "",
        ]
        if p["runs"]:
            out += _runs_table(p["runs"])
            if p.get("spread_runs"):
                out += [
                    "Two load generators side by side, canarycast with two worker "
                    "processes (one generator per worker port), TorchServe as above:",
                    "",
                ]
                out += _workers_table(p["spread_runs"])
            out += _ratios(p["ratios"])
    r = results.get("router")
    if r:
        out += ["## 3. Router cost (and nginx as the reference proxy)", ""]
        if r.get("nginx_error"):
            out += [f"nginx could not run: `{r['nginx_error']}`", ""]
        out += _runs_table(r["runs"]) + _ratios(r["ratios"])
    smp = results.get("sample")
    if smp:
        out += [
            "### The analysis sample (`--analysis-fraction`)",
            "",
            "Routers with the embedded controller, split at weight 0.2 with dual-run "
            f"copies, concurrency {smp['concurrency']}; CPU per 1,000 answered calls "
            "(the router process, and the analyzer's share of it), throughput against "
            "direct in the same run.",
            "",
        ]
        out += _table(
            [
                "analysis fraction",
                "calls",
                "router CPU s / 1k calls",
                "analyzer CPU s / 1k calls",
                "throughput / direct",
                "p50 ms",
                "p99 ms",
                "errors",
            ],
            [
                [
                    x["analysis_fraction"],
                    x["calls"],
                    x["router_cpu_s_per_1k_calls"],
                    x["analyzer_cpu_s_per_1k_calls"],
                    x["throughput_over_direct"],
                    x["p50_ms"],
                    x["p99_ms"],
                    x["errors"],
                ]
                for x in smp["rows"]
            ],
        )
    a = results.get("analysis")
    if a:
        out += ["## 4. Analysis cost", "", f"Workload: {a['workload']}.", ""]
        out += _table(
            ["path", "spans or records/s", "note"],
            [
                ["Analyzer fed directly (records)", a["direct"]["records_per_s"], ""],
                [
                    "in-process SpanProcessor (spans, made with the SDK)",
                    a["span_processor"]["spans_per_s"],
                    f"producing the spans took {a['span_processor']['producer_seconds']:.2f} s "
                    f"of {a['span_processor']['seconds']:.2f} s",
                ],
                [
                    "OTLP/gRPC receiver (spans, sender in another process)",
                    a["otlp_receiver"]["spans_per_s"],
                    f"sender CPU {a['otlp_receiver']['sender_cpu_cores']} cores",
                ],
            ],
        )
        out += _table(
            ["pending forecasts", "bytes per pending forecast", "us per add"],
            [[m["pending"], m["bytes_per_pending"], m["us_per_add"]] for m in a["memory"]],
        )
        out += _table(["pairs", "judge decision ms"], [[j["pairs"], j["ms"]] for j in a["judge"]])
        out += _ratios(a["ratios"])
    g = results.get("growth")
    if g:
        out += ["## 5. How cost grows", ""]
        for dim, rows in g["curves"].items():
            out += [f"![{dim}](growth_{dim}.png)", ""]
            out += _table(
                [dim, "forecasts/s", "p50 ms", "p99 ms", "server CPU (cores)"],
                [
                    [
                        x["value"],
                        x["forecasts_per_s"],
                        x["p50_ms"],
                        x["p99_ms"],
                        x["server_cpu_cores"],
                    ]
                    for x in rows
                ],
            )
        if a:
            out += ["![analyzer memory](analyzer_memory.png)", ""]
        out += _ratios(g["ratios"])
    acc = results.get("accuracy")
    if acc:
        out += ["## 6. Forecast accuracy (rolling origin over the test period)", ""]
        out += [
            f"Section run in {acc.get('seconds', float('nan')):.0f} s. The LSTM: the default "
            "recipe, trained once per dataset (seasons, lookback and horizon from the data). "
            "The baselines (statsforecast): fitted once per series on the history before the "
            "test period, then applied at every origin with their parameters kept. "
            "Seconds: LSTM training; a baseline's fit plus all its forecasts.",
            "",
        ]
        if acc.get("stats_error"):
            out += ["statsforecast could not run:", "", "```", acc["stats_error"], "```", ""]
        out += accuracy_table(acc) + _ratios(acc["ratios"])
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if errors:
        out += ["## Sections that failed", ""]
        out += [f"- {k}: `{v}`" for k, v in errors.items()] + [""]
    return "\n".join(out)


def plots(results: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    g = results.get("growth")
    if g and "curves" in g:
        for dim, rows in g["curves"].items():
            fig, ax = plt.subplots(figsize=(6, 4))
            xs = [x["value"] for x in rows]
            ax.plot(xs, [x["forecasts_per_s"] for x in rows], "o-", label="forecasts/s")
            ax.set_xscale("log" if max(xs) / max(min(xs), 1) > 20 else "linear")
            ax.set_xlabel(dim.replace("_", " "))
            ax.set_ylabel("forecasts/s")
            ax2 = ax.twinx()
            ax2.plot(xs, [x["p50_ms"] for x in rows], "s--", color="tab:orange", label="p50 ms")
            ax2.plot(xs, [x["p99_ms"] for x in rows], "^--", color="tab:red", label="p99 ms")
            ax2.set_ylabel("latency, ms")
            fig.legend(loc="upper center", ncol=3, fontsize=8)
            ax.set_title(f"model server: cost as the {dim.replace('_', ' ')} grows", fontsize=10)
            fig.tight_layout(rect=(0, 0, 1, 0.92))
            path = folder / f"growth_{dim}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    a = results.get("analysis")
    if a and "memory" in a:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [m["pending"] for m in a["memory"]]
        ax.plot(xs, [m["rss_bytes"] / 2**20 for m in a["memory"]], "o-", label="resident MiB")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pending forecasts")
        ax.set_ylabel("resident memory, MiB")
        for x, m in zip(xs, a["memory"], strict=True):
            ax.annotate(f"{m['bytes_per_pending']:.0f} B each", (x, m["rss_bytes"] / 2**20))
        ax.set_title("analyzer memory as pending forecasts grow", fontsize=10)
        fig.tight_layout()
        path = folder / "analyzer_memory.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    acc = results.get("accuracy")
    for r in acc["rows"] if acc else []:
        week = r.get("week")
        if not week:
            continue
        fig, ax = plt.subplots(figsize=(9, 4))
        hours = range(len(week["actual"]))
        ax.plot(hours, week["actual"], color="black", lw=1.2, label="actual")
        colours = {"LSTM": "tab:blue", "AutoARIMA": "tab:orange", "MSTL": "tab:green"}
        for name, f in week["forecasts"].items():
            c = colours.get(name, "tab:gray")
            ax.plot(hours, f["point"], color=c, lw=1, label=f"{name} median")
            if name == "LSTM":
                ax.fill_between(hours, f["lo"], f["hi"], color=c, alpha=0.2, label="LSTM 80 %")
        for day in range(0, len(week["actual"]), 24):
            ax.axvline(day, color="gray", lw=0.3)
        ax.set_xlabel(f"hours from {week['start'][:16]} (a day-ahead forecast at each gray line)")
        ax.set_ylabel("temperature")
        ax.set_title(f"{r['dataset']}: the first test week, day-ahead forecasts", fontsize=10)
        ax.legend(fontsize=7, ncol=5, loc="upper center")
        fig.tight_layout()
        path = folder / f"accuracy_week_{r['dataset']}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
