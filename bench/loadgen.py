"""The load generator: its own process, N concurrent callers, its own CPU time reported.

    echo '[{"name": "c16", "kind": "grpc", "target": "127.0.0.1:50051", ...}]' \
        | python -m bench.loadgen

gRPC scenarios use grpc.aio with `concurrency` coroutines sharing ONE channel (one
HTTP/2 connection) and send pre-serialized `ForecastRequest` bytes through a generic
unary-unary call (no protobuf work in the measured loop). HTTP scenarios (TorchServe's
REST API) use one keep-alive HTTP/1.1 connection per caller, since HTTP/1.1 cannot
multiplex. Histories are windows of the real seattle-temps series, a different series
id per request. Calls are counted and timed only inside [warmup, warmup + duration];
the result carries this process's CPU seconds (getrusage) and, when `server_pids` are
given, the CPU seconds of those processes and their children over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

import grpc
import numpy as np

from bench.common import percentiles_ms, tree_cpu_seconds
from canarycast.client import SeriesData, build_request, to_ns
from server.lifecycle.data import load_dataset

FORECAST_METHOD = "/canarycast.v1.Forecaster/Forecast"
POOL = 256  # distinct requests per scenario, cycled
MAX_MESSAGE = 64 * 1024 * 1024


def histories(n: int, length: int) -> list[np.ndarray]:
    """`n` windows of `length` consecutive values of seattle-temps (repeated if too long)."""
    values = load_dataset("seattle-temps").series[0].values
    if length > values.size:
        values = np.tile(values, length // values.size + 1)
    starts = np.linspace(0, values.size - length, n).astype(int)
    return [values[s : s + length] for s in starts]


def grpc_requests(s: dict[str, Any]) -> list[bytes]:
    k, length = int(s.get("series_per_call", 1)), int(s.get("history", 48))
    pool = max(int(s.get("pool", POOL)) // k, 4)
    windows = histories(pool * k, length)
    start = to_ns("2010-01-01T00:00")
    out = []
    for i in range(pool):
        series = [SeriesData(f"bench-{i}-{j}", windows[i * k + j], start=start) for j in range(k)]
        request = build_request(series, int(s.get("horizon", 24)), s.get("quantiles", [0.1, 0.9]))
        out.append(request.SerializeToString())
    return out


def http_requests(s: dict[str, Any]) -> list[bytes]:
    host, port = s["target"].rsplit(":", 1)
    out = []
    for w in histories(POOL, int(s.get("history", 48))):
        body = json.dumps({"history": w.tolist(), "horizon": int(s.get("horizon", 24))}).encode()
        head = (
            f"POST {s['path']} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def _read_http(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


class _Tally:
    def __init__(self, t_start: float, t_end: float) -> None:
        self.t_start, self.t_end = t_start, t_end
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""

    def done(self, began: float, ended: float, error: str | None) -> None:
        if began < self.t_start or ended > self.t_end:
            return
        if error is None:
            self.latencies.append(ended - began)
        else:
            self.errors += 1
            self.first_error = self.first_error or error


async def run_grpc(s: dict[str, Any], tally: _Tally) -> None:
    requests = grpc_requests(s)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    async with grpc.aio.insecure_channel(s["target"], options=options) as channel:
        call = channel.unary_unary(FORECAST_METHOD)
        await channel.channel_ready()

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < tally.t_end:
                began = time.perf_counter()
                error = None
                try:
                    await call(requests[i % len(requests)], timeout=60.0)
                except grpc.aio.AioRpcError as exc:
                    error = f"{exc.code().name}: {exc.details()}"
                tally.done(began, time.perf_counter(), error)
                i += int(s["concurrency"])

        await asyncio.gather(*(worker(w) for w in range(int(s["concurrency"]))))


async def run_http(s: dict[str, Any], tally: _Tally) -> None:
    requests = http_requests(s)
    host, port = s["target"].rsplit(":", 1)

    async def worker(w: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        i = w
        try:
            while time.perf_counter() < tally.t_end:
                began = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await _read_http(reader)
                error = None if status == 200 else f"HTTP {status}: {body[:200]!r}"
                tally.done(began, time.perf_counter(), error)
                i += int(s["concurrency"])
        finally:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(int(s["concurrency"]))))


def run_scenario(s: dict[str, Any]) -> dict[str, Any]:
    warmup, duration = float(s.get("warmup", 1.0)), float(s.get("duration", 4.0))
    pids = [int(p) for p in s.get("server_pids", [])]
    t0 = time.perf_counter()
    tally = _Tally(t0 + warmup, t0 + warmup + duration)
    marks: dict[str, float] = {}

    async def main() -> None:
        async def mark() -> None:
            await asyncio.sleep(max(tally.t_start - time.perf_counter(), 0))
            marks["cpu0"] = _self_cpu()
            marks["server0"] = sum(tree_cpu_seconds(p) for p in pids)
            await asyncio.sleep(max(tally.t_end - time.perf_counter(), 0))
            marks["cpu1"] = _self_cpu()
            marks["server1"] = sum(tree_cpu_seconds(p) for p in pids)

        runner = run_grpc if s.get("kind", "grpc") == "grpc" else run_http
        await asyncio.gather(runner(s, tally), mark())

    asyncio.run(main())
    calls = len(tally.latencies)
    k = int(s.get("series_per_call", 1))
    cpu = marks["cpu1"] - marks["cpu0"]
    server_cpu = marks["server1"] - marks["server0"]
    return {
        "name": s.get("name", ""),
        "concurrency": int(s["concurrency"]),
        "series_per_call": k,
        "history": int(s.get("history", 48)),
        "horizon": int(s.get("horizon", 24)),
        "calls": calls,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "seconds": duration,
        "calls_per_s": calls / duration,
        "forecasts_per_s": calls * k / duration,
        **percentiles_ms(tally.latencies),
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_cpu_cores": round(cpu / duration, 3),
        "server_cpu_s": round(server_cpu, 3) if pids else None,
        "server_cpu_cores": round(server_cpu / duration, 3) if pids else None,
    }


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--progress", default="", help="label of a progress bar on stderr")
    args = parser.parse_args(argv)
    scenarios = json.load(sys.stdin)
    from tqdm import tqdm

    results = []
    for s in tqdm(scenarios, desc=args.progress or "load", disable=not args.progress, leave=False):
        results.append(run_scenario(s))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
