"""The decision webhook: delivered in order, retried on 5xx and connection errors.

A real HTTP server on loopback receives the POSTs.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from router.rollout.controller import Webhook
from router.rollout.store import DecisionRow, RolloutRecord
from tests.conftest import MODEL


def decision(action: str, at: float) -> DecisionRow:
    return DecisionRow("r1", at, action, "because", "controller", 0.1, {})


RECORD = RolloutRecord("r1", MODEL, "stable00000", "canary00000", "progressing", 0, 0.1, 0.0, 0.0)


@contextmanager
def receiver(statuses: list[int], delay_first: float = 0.0) -> Iterator[tuple[str, list[dict]]]:
    """Answers each POST with the next status in `statuses` (then 204); records 2xx bodies."""
    received: list[dict] = []
    answered = 0
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal answered
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                index = answered
                answered += 1
            if index == 0 and delay_first:
                time.sleep(delay_first)
            status = statuses[index] if index < len(statuses) else 204
            if status < 300:
                received.append(body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_slow_first_delivery_does_not_let_a_later_decision_overtake_it() -> None:
    with receiver([], delay_first=0.3) as (url, received):
        hook = Webhook(url)
        for at, action in enumerate(["start", "promote_step", "rollback"]):
            hook.send(decision(action, float(at)), RECORD)
        hook.close()
    assert [r["decision"]["action"] for r in received] == ["start", "promote_step", "rollback"]
    assert received[0]["rollout"]["candidate_version"] == "canary00000"


def test_a_5xx_is_retried_and_then_delivered() -> None:
    with receiver([503, 502]) as (url, received):
        hook = Webhook(url, backoff=0.01)
        assert hook.send(decision("start", 0.0), RECORD).result(timeout=10) is True
        hook.close()
    assert [r["decision"]["action"] for r in received] == ["start"]


def test_a_4xx_is_not_retried_and_an_unreachable_url_gives_up() -> None:
    with receiver([400]) as (url, received):
        hook = Webhook(url, backoff=0.01)
        assert hook.send(decision("start", 0.0), RECORD).result(timeout=10) is False
        assert hook.send(decision("rollback", 1.0), RECORD).result(timeout=10) is True
        hook.close()
    assert [r["decision"]["action"] for r in received] == ["rollback"]

    with receiver([]) as (url, _):
        pass  # closed: nothing listens on the port any more
    hook = Webhook(url, attempts=2, backoff=0.01, timeout=1.0)
    assert hook.send(decision("start", 0.0), RECORD).result(timeout=10) is False
    hook.close()
