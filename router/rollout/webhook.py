"""The rollout's webhook: every decision but a hold, POSTed as JSON to one URL, in order."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict

import structlog

from router.rollout.store import DecisionRow, RolloutRecord

log = structlog.get_logger("canarycast.controller")


class Webhook:
    """POSTs decisions to one URL in the order they were taken, off the event loop.

    One worker thread sends them one after another, so a receiver never sees a
    rollback before the start it ends. A failed delivery (connection error, 5xx)
    is retried with backoff before it is logged and dropped; the decision itself
    is already in the rollout store, so the webhook is a notification, not the record.
    """

    def __init__(
        self, url: str, *, attempts: int = 3, backoff: float = 0.5, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webhook")

    def send(self, decision: DecisionRow, record: RolloutRecord) -> concurrent.futures.Future[bool]:
        body = json.dumps({"decision": asdict(decision), "rollout": asdict(record)}, default=str)
        return self._pool.submit(self._deliver, body.encode(), decision.action)

    def close(self) -> None:
        """Wait for queued deliveries (each bounded by its timeout and retries)."""
        self._pool.shutdown(wait=True)

    def _deliver(self, body: bytes, action: str) -> bool:
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code < 500:  # the receiver refused it: asking again will not help
                    break
            except OSError as exc:
                error = str(exc)
            if attempt < self.attempts:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        log.warning("webhook_failed", url=self.url, action=action, attempts=attempt, error=error)
        return False
