"""Worker processes of `canarycast serve --workers N` and `canarycast route --workers N`:
fork, gate, supervise, aggregate.

The parent forks N workers before any gRPC object exists (gRPC's
`examples/python/multiprocessing` does the same; a forked gRPC core is not usable). It
imports no torch work and opens no channel: it forks, waits for every worker to load, tells
them all to turn SERVING at once, forwards SIGTERM/SIGINT, and serves the workers' metrics
as one scrape.

How calls get spread. gRPC clients keep one long-lived HTTP/2 connection, so a port shared
with SO_REUSEPORT spreads *connections*, not calls: a router would send everything to one
worker. So each worker listens on the shared port (for probes and clients that know nothing
of workers) *and* on a port of its own; a router dials the workers' own ports as replicas
(`--stable HOST:P0 HOST:P1 …`, or `dns:///SERVICE:P0 …`) and balances every call over them.
Router workers are what applications dial; their clients are many, so the shared port's
connections spread over them, and each worker follows the one controller (`--follow`) and
sends its spans to the one analyzer over OTLP.

Health. Workers keep health NOT_SERVING after loading until the parent says go, which it
does when every worker has loaded: the shared port says SERVING only when the whole pod
does. A worker that dies stops the pod: the parent sends SIGTERM to the others (health
NOT_SERVING, drain) and exits 1. It does not restart the worker: the container's restart
policy already does that with back-off and a visible restart count, and forking again from a
parent that now runs a metrics thread is not safe.

Metrics. Each worker serves its own registry on a loopback port; the parent's /metrics
fetches them all and merges them (counters, histograms and summaries summed, gauges summed
unless named as `max`, `_created` the earliest): one scrape shows the pod, with the metric
names and labels a single process has. prometheus_client's multiprocess mode was the other
way; it does not support `Gauge.set_function`, `Info` or custom collectors, which the
servers use.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

log = structlog.get_logger("canarycast.workers")

#: What the parent writes to a worker's pipe once every worker has loaded.
GO = b"g"
PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def worker_ports(count: int, port: int, base: int | None) -> list[int]:
    """Each worker's own port: `base + i`; without a base, `port + 1 + i`, or free ports
    (0) when `port` is 0. Raises ValueError naming the flag on a bad value."""
    if count < 1:
        raise ValueError(f"--workers must be at least 1, got {count}")
    if base is None:
        if port == 0:
            return [0] * count
        base = port + 1
    elif base == 0:
        return [0] * count
    if base < 1 or base + count - 1 > 65535:
        raise ValueError(
            f"--worker-port-base {base}: ports {base}..{base + count - 1} are not all in 1..65535"
        )
    ports = [base + i for i in range(count)]
    if port in ports:
        raise ValueError(f"--worker-port-base {base}: worker ports {ports} include --port {port}")
    return ports


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening: it holds the
    number (port 0 picks one) while workers bind the same port; the kernel spreads new
    connections over the listening ones only."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class WorkerLink:
    """A worker's end of its two pipes to the parent: report once loaded, wait for go."""

    def __init__(self, index: int, count: int, report_fd: int, go_fd: int) -> None:
        self.index = index
        self.count = count
        self.report_fd = report_fd
        self.go_fd = go_fd

    def report(self, info: Mapping[str, Any]) -> None:
        """Tell the parent this worker has loaded (ports, pid, anything else in `info`)."""
        os.write(self.report_fd, (json.dumps(dict(info)) + "\n").encode())

    def watch(self, on_go: Callable[[], None], on_parent_gone: Callable[[], None]) -> None:
        """On the running asyncio loop: call `on_go` when the parent says go and
        `on_parent_gone` when its pipe closes (the parent ended)."""
        import asyncio

        loop = asyncio.get_running_loop()

        def readable() -> None:
            data = os.read(self.go_fd, 64)
            if GO in data:
                on_go()
            if not data:
                loop.remove_reader(self.go_fd)
                on_parent_gone()

        loop.add_reader(self.go_fd, readable)


class Startable(Protocol):
    async def start(self) -> int: ...

    async def stop(self, grace: float | None = None) -> None: ...


async def run_worker(
    component: Startable, link: WorkerLink, info: Callable[[], Mapping[str, Any]]
) -> None:
    """A worker whose component turns SERVING in `start` (a router: no model to load):
    start, report `info()`, run until SIGTERM/SIGINT or the parent's end, then stop."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    link.watch(lambda: None, stop.set)
    try:
        await component.start()
        link.report(info())
        await stop.wait()
    finally:
        await component.stop()


@dataclass
class _Worker:
    index: int
    pid: int
    report_fd: int
    go_fd: int
    info: dict[str, Any] | None = None
    buffer: bytes = b""
    code: int | None = None  # exit code once it ended


Worker = Callable[[WorkerLink], int]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent ends, even by SIGKILL (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_child(worker: Worker, link: WorkerLink, close: Iterable[int]) -> None:
    """In the forked child: run `worker`, then leave with its code (never return)."""
    code = 1
    try:
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        structlog.contextvars.bind_contextvars(worker=link.index)
        code = worker(link)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class Supervisor:
    """Fork `count` workers and run them until a signal or a worker's death.

    `on_ready(infos)` runs once every worker has reported (after go was sent) and returns
    what to close at the end (the metrics endpoint); `stop_timeout`: seconds the workers get
    to drain after SIGTERM before SIGKILL."""

    count: int
    worker: Worker
    on_ready: Callable[[list[dict[str, Any]]], Callable[[], None] | None]
    stop_timeout: float = 30.0
    name: str = "canarycast"
    workers: list[_Worker] = field(default_factory=list)

    def run(self) -> int:
        # The parent and its workers share one stderr: each log line must be one write
        # (print() writes the line, then its newline: two lines of two processes ran into
        # one and the parent's `serving` line was lost to whoever waited for it).
        structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=sys.stderr))
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signals: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda signum, frame: signals.append(signum))
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        old_wakeup = signal.set_wakeup_fd(wake_w)
        sys.stdout.flush()
        sys.stderr.flush()
        close_at_end: Callable[[], None] | None = None
        try:
            for index in range(self.count):
                report_r, report_w = os.pipe()
                go_r, go_w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    parent_side = [wake_r, wake_w, report_r, go_w]
                    for w in self.workers:
                        parent_side += [w.report_fd, w.go_fd]
                    link = WorkerLink(index, self.count, report_w, go_r)
                    _run_child(self.worker, link, parent_side)
                os.close(report_w)
                os.close(go_r)
                self.workers.append(_Worker(index, pid, report_r, go_w))
            log.info("workers started", workers=self.count, pids=[w.pid for w in self.workers])
            failed, close_at_end = self._loop(wake_r, signals)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for w in self.workers:  # left early (an error in the parent): stop them too
                if w.code is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGTERM)
            for w in self.workers:
                self._reap(w, block=True)
                for fd in (w.report_fd, w.go_fd):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            os.close(wake_r)
            os.close(wake_w)
            if close_at_end is not None:
                close_at_end()
        codes = [w.code for w in self.workers]
        log.info("stopped", worker_exit_codes=codes)
        return 1 if failed or any(code != 0 for code in codes) else 0

    def _loop(self, wake_r: int, signals: list[int]) -> tuple[bool, Callable[[], None] | None]:
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, None)
        for w in self.workers:
            selector.register(w.report_fd, selectors.EVENT_READ, w)
        stopping_since: float | None = None
        failed = False
        announced = False
        close_at_end: Callable[[], None] | None = None

        def stop_all(why: str) -> None:
            nonlocal stopping_since
            if stopping_since is None:
                stopping_since = time.monotonic()
                log.info("stopping workers", reason=why)
                for w in self.workers:
                    if w.code is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(w.pid, signal.SIGTERM)

        while any(w.code is None for w in self.workers):
            timeout = None
            if stopping_since is not None:
                timeout = max(0.0, stopping_since + self.stop_timeout - time.monotonic())
                if timeout == 0.0:
                    for w in self.workers:
                        if w.code is None:
                            log.error("worker did not stop; killing it", worker=w.index, pid=w.pid)
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(w.pid, signal.SIGKILL)
                    break
            for key, _ in selector.select(timeout):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    if signals:
                        stop_all(signal.Signals(signals[-1]).name)
                    continue
                w = key.data
                data = os.read(w.report_fd, 65536)
                if data:
                    w.buffer += data
                    while b"\n" in w.buffer and w.info is None:
                        line, _, w.buffer = w.buffer.partition(b"\n")
                        w.info = {"index": w.index, "pid": w.pid, **json.loads(line)}
                    continue
                selector.unregister(w.report_fd)  # closed: the worker ended
                self._reap(w, block=True)
                if stopping_since is None:
                    log.error("worker exited", worker=w.index, pid=w.pid, exit_code=w.code)
                    failed = True
                    stop_all(f"worker {w.index} exited with code {w.code}")
            if (
                not announced
                and stopping_since is None
                and all(w.info is not None for w in self.workers)
            ):
                announced = True
                for w in self.workers:
                    with contextlib.suppress(BrokenPipeError):
                        os.write(w.go_fd, GO)
                close_at_end = self.on_ready([w.info for w in self.workers if w.info])
        selector.close()
        return failed, close_at_end

    def _reap(self, w: _Worker, *, block: bool) -> None:
        if w.code is not None:
            return
        try:
            pid, status = os.waitpid(w.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            w.code = 1
            return
        if pid:
            w.code = os.waitstatus_to_exitcode(status)


# --- one scrape for the pod -------------------------------------------------------------


def merge_expositions(texts: Sequence[str], max_gauges: frozenset[str] = frozenset()) -> list[Any]:
    """Prometheus text expositions of several processes merged into metric families, as
    one process would expose them: counter, histogram and summary samples summed per label
    set, gauges summed unless their name is in `max_gauges` or ends in `_info` (then the
    largest), `_created` samples the earliest."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            take_max = family.type in ("info", "stateset") or (
                family.type == "gauge"
                and (family.name in max_gauges or family.name.endswith("_info"))
            )
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(merged[key], sample.value)
                elif take_max:
                    merged[key] = max(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class WorkerMetrics:
    """A prometheus_client collector: every worker's /metrics, fetched at scrape time and
    merged (`merge_expositions`). A worker that does not answer counts with its last
    scrape, so that summed counters never go backwards."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        prefix: str,
        max_gauges: frozenset[str] = frozenset(),
        timeout: float = 2.0,
    ) -> None:
        self.urls = list(urls)
        self.prefix = prefix
        self.max_gauges = max_gauges
        self.timeout = timeout
        self._last: dict[str, str] = {}
        self._failures = 0

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        texts = []
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                    self._last[url] = answer.read().decode()
            except OSError:
                self._failures += 1
            texts.append(self._last.get(url, ""))
        yield from merge_expositions(texts, self.max_gauges)
        yield GaugeMetricFamily(
            f"{self.prefix}_workers", "Worker processes of this pod.", value=len(self.urls)
        )
        yield CounterMetricFamily(
            f"{self.prefix}_worker_scrape_failures",
            "Worker /metrics fetches that failed (the worker's last scrape was used).",
            value=self._failures,
        )


def flush_spans(provider: object) -> None:
    """Export the spans a worker's tracer provider holds: a worker leaves with os._exit,
    which runs no atexit hook (a provider without ``shutdown``, the API's default, holds
    none)."""
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def serve_pod_metrics(
    infos: Sequence[Mapping[str, Any]],
    *,
    prefix: str,
    max_gauges: frozenset[str],
    port: int | None,
    host: str,
) -> Any:
    """The parent's /metrics on `port` (None: none): every worker's metrics (its
    ``metrics_port`` in `infos`, on loopback) merged by :class:`WorkerMetrics` at each
    scrape. Returns the endpoint (its ``port``, ``close``) or None."""
    if port is None:
        return None
    from prometheus_client import CollectorRegistry

    from canarycast.telemetry import serve_metrics

    urls = [f"http://127.0.0.1:{i['metrics_port']}/metrics" for i in infos]
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(urls, prefix=prefix, max_gauges=max_gauges))
    return serve_metrics(registry, port, host)
