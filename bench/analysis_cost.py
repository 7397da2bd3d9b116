"""Section 4 (and the analyzer curve of section 5): what the canary analysis costs.

- records/s the `Analyzer` takes when fed directly, and spans/s end to end through the
  in-process `AnalyzerSpanProcessor` (spans made with the real SDK and `canarycast.spans`);
- spans/s through the OTLP/gRPC receiver, sent by a separate process
  (`python -m bench.analysis_cost send`) that encodes with the OTLP exporter's encoder;
- resident memory per pending forecast at 10^4, 10^5, 10^6 pending (one fresh process per
  size, `python -m bench.analysis_cost memory N`);
- how long one judge decision takes, by the number of rows of paired steps (both
  metrics judged, 200 series).

A workload unit is a forecast of 12 points for one of 1 000 series and the observation
(12 actual values) that scores it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from bench.common import ROOT, ratio

HORIZON = 12
SERIES = 1000
HOUR_NS = 3600 * 10**9
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _records(n: int) -> tuple[list[Any], list[Any]]:
    from router.rollout.analysis import ForecastRecord, ObservationRecord

    forecasts, observations = [], []
    for i in range(n):
        series, round_ = f"s{i % SERIES}", i // SERIES
        ts = tuple((round_ * HORIZON + k) * HOUR_NS for k in range(HORIZON))
        forecasts.append(
            ForecastRecord(
                series_id=series,
                forecast_id=f"f{i}",
                call_id=None,
                variant="stable" if i % 2 == 0 else "canary",
                model_version="v1",
                timestamps=ts,
                point=tuple(float(k) for k in range(HORIZON)),
                scale=1.0,
                shadow=False,
            )
        )
        observations.append(
            ObservationRecord(series, ts, tuple(float(k) + 0.5 for k in range(HORIZON)))
        )
    return forecasts, observations


def direct_rate(n: int) -> dict[str, Any]:
    from router.rollout.analysis import Analyzer

    analyzer = Analyzer(max_pending=n + 1, max_actuals=n * HORIZON + 1, ttl=1e9)
    forecasts, observations = _records(n)
    t = time.perf_counter()
    for f, o in zip(forecasts, observations, strict=True):
        analyzer.add_forecast(f)
        analyzer.add_observation(o)
    dt = time.perf_counter() - t
    scored = sum(analyzer.stats().scored.values())
    return {"records": 2 * n, "seconds": dt, "records_per_s": 2 * n / dt, "scored": scored}


def _make_spans(tracer: Any, n: int) -> None:
    from canarycast import spans

    point = [float(k) for k in range(HORIZON)]
    actual = [float(k) + 0.5 for k in range(HORIZON)]
    for i in range(n):
        series, round_ = f"s{i % SERIES}", i // SERIES
        ts = [(round_ * HORIZON + k) * HOUR_NS for k in range(HORIZON)]
        spans.record_forecast(
            tracer,
            series_id=series,
            forecast_id=f"f{i}",
            model_name="bench",
            model_version="v1",
            variant="stable" if i % 2 == 0 else "canary",
            point=point,
            timestamps=ts,
            scale=1.0,
        )
        spans.record_observation(tracer, series, ts, actual)


def span_processor_rate(n: int) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider

    from router.rollout.analysis import Analyzer
    from router.rollout.spans_in import AnalyzerSpanProcessor

    analyzer = Analyzer(max_pending=n + 1, max_actuals=n * HORIZON + 1, ttl=1e9)
    processor = AnalyzerSpanProcessor(analyzer, max_queue=4 * n)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    t = time.perf_counter()
    _make_spans(tracer, n)
    made = time.perf_counter() - t
    processor.force_flush(600_000)
    dt = time.perf_counter() - t
    provider.shutdown()
    return {
        "spans": 2 * n,
        "seconds": dt,
        "spans_per_s": 2 * n / dt,
        "producer_seconds": made,
        "dropped": processor.dropped,
        "scored": sum(analyzer.stats().scored.values()),
    }


def otlp_rate(n: int, batch: int = 512, concurrency: int = 2) -> dict[str, Any]:
    """Receiver in this process (its own event loop thread), sender in another process."""
    from router.rollout.analysis import Analyzer
    from router.rollout.spans_in import serve_otlp_receiver

    analyzer = Analyzer(max_pending=n + 1, max_actuals=n * HORIZON + 1, ttl=1e9)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        server, port = await serve_otlp_receiver(analyzer)
        holder["server"], holder["port"] = server, port
        ready.set()

    # The loop runs until stopped by hand: ending it when the server terminates would
    # race the `stop` coroutine that terminates it (its future would never resolve).
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    ready.wait(30)
    try:
        cmd = [sys.executable, "-m", "bench.analysis_cost", "send", f"127.0.0.1:{holder['port']}"]
        cmd += [str(n), "--batch", str(batch), "--concurrency", str(concurrency)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"OTLP sender failed:\n{proc.stderr[-2000:]}")
        sent: dict[str, Any] = json.loads(proc.stdout)
    finally:
        asyncio.run_coroutine_threadsafe(holder["server"].stop(0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        loop.close()
    sent["scored"] = sum(analyzer.stats().scored.values())
    return sent


def send(target: str, n: int, batch: int, concurrency: int) -> dict[str, Any]:
    """The OTLP sender: make `n` forecast + `n` observe spans, encode, export, time it."""
    import grpc
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _make_spans(provider.get_tracer("bench"), n)
    finished = list(exporter.get_finished_spans())
    payloads = [
        encode_spans(finished[i : i + batch]).SerializeToString()
        for i in range(0, len(finished), batch)
    ]
    usage0 = resource.getrusage(resource.RUSAGE_SELF)

    async def main() -> float:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(EXPORT_METHOD)
            await channel.channel_ready()
            queue = list(payloads)
            t = time.perf_counter()

            async def worker() -> None:
                while queue:
                    await call(queue.pop(), timeout=120)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - t

    dt = asyncio.run(main())
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    return {
        "spans": len(finished),
        "batch": batch,
        "concurrency": concurrency,
        "seconds": dt,
        "spans_per_s": len(finished) / dt,
        "sender_cpu_s": round(cpu, 3),
        "sender_cpu_cores": round(cpu / dt, 3),
    }


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(n: int) -> dict[str, Any]:
    """Resident bytes per pending forecast with `n` pending (no actuals arrive)."""
    from router.rollout.analysis import Analyzer

    forecasts, _ = _records(n)
    analyzer = Analyzer(max_pending=n + 1, ttl=1e9)
    gc.collect()
    before = _rss()
    t = time.perf_counter()
    for f in forecasts:
        analyzer.add_forecast(f)
    dt = time.perf_counter() - t
    del forecasts  # the analyzer holds each record; what remains is what it keeps
    gc.collect()
    after = _rss()
    pending = analyzer.stats().pending_forecasts
    return {
        "pending": pending,
        "rss_bytes": after - before,
        "bytes_per_pending": (after - before) / max(pending, 1),
        "add_seconds": dt,
        "us_per_add": dt / n * 1e6,
    }


def memory_in_fresh_process(n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.analysis_cost", "memory", str(n)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def judge_timing(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """One decision on n rows of paired steps: 200 hourly series, a day-ahead horizon."""
    from router.rollout import judge as j
    from router.rollout.judge import Evidence, JudgePolicy, VariantStats, judge

    rng = np.random.default_rng(0)
    rows = []
    hour = 3600 * 10**9
    for n in sizes:
        steps = np.zeros((n, j.STEP_COLUMNS))
        steps[:, j.SERIES] = np.arange(n) % 200
        steps[:, j.TARGET] = 1.7e18 + (np.arange(n) // 200) * hour
        steps[:, j.BLOCK] = 24 * hour
        stable = rng.gamma(2.0, 0.5, n)
        steps[:, j.STABLE_SCORE] = steps[:, j.STABLE_INTERVAL] = stable
        steps[:, j.CANARY_SCORE] = stable * rng.lognormal(0.0, 0.2, n)
        steps[:, j.CANARY_INTERVAL] = stable * rng.lognormal(0.0, 0.2, n)
        steps[:, j.COUNT] = steps[:, j.COUNT_INTERVAL] = 1.0
        stats = VariantStats(calls=n, errors=0, p99_latency=0.01)
        evidence = Evidence(steps, np.empty(0), np.empty(0), stats, stats)
        policy = JudgePolicy()
        judge(policy, evidence)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            verdict = judge(policy, evidence)
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "pairs": n,
                "units": verdict.samples,
                "ms": float(np.median(times)) * 1000,
                "verdict": verdict.verdict,
            }
        )
    return rows


def analysis_section(*, smoke: bool = False) -> dict[str, Any]:
    from tqdm import tqdm

    n = 500 if smoke else 50_000
    sizes = (500, 2_000) if smoke else (10_000, 100_000, 1_000_000)
    steps = tqdm(total=4 + len(sizes), desc="analysis", leave=False, file=sys.stderr)
    direct = direct_rate(n)
    steps.update()
    processor = span_processor_rate(n)
    steps.update()
    otlp = otlp_rate(n)
    steps.update()
    mem = []
    for size in sizes:
        mem.append(memory_in_fresh_process(size))
        steps.update()
    judge_rows = judge_timing((100, 1_000) if smoke else (100, 1_000, 10_000, 100_000))
    steps.update()
    steps.close()
    return {
        "workload": f"{n} forecasts of {HORIZON} points over {SERIES} series, each scored by "
        "one observation",
        "direct": direct,
        "span_processor": processor,
        "otlp_receiver": otlp,
        "memory": mem,
        "judge": judge_rows,
        "ratios": {
            "otlp_over_in_process_spans_per_s": ratio(
                otlp["spans_per_s"], processor["spans_per_s"]
            ),
            "in_process_spans_over_direct_records_per_s": ratio(
                processor["spans_per_s"], direct["records_per_s"]
            ),
            "bytes_per_pending_largest_over_smallest": ratio(
                mem[-1]["bytes_per_pending"], mem[0]["bytes_per_pending"]
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="helpers of the analysis benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    s.add_argument("target")
    s.add_argument("n", type=int)
    s.add_argument("--batch", type=int, default=512)
    s.add_argument("--concurrency", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("n", type=int)
    args = parser.parse_args(argv)
    if args.command == "send":
        result = send(args.target, args.n, args.batch, args.concurrency)
    else:
        result = memory(args.n)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
