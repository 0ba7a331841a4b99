"""A trial's MLflow writes while the tracking server is away: kept in order, replayed once it is
back, so training never waits on the server and no record is lost.

Each write gets one short try (`SERVER_TIMEOUT_SECONDS`, no HTTP retries: `shorten_http_waits` sets
that for the trial's process). A write that fails waits in the outbox, and so does every write after
it, in order; a later write first tries to empty the outbox, at most once per `RETRY_AFTER_SECONDS`.
So during an outage training loses at most one short try per `RETRY_AFTER_SECONDS` (a refused
connection costs milliseconds, a hung server `SERVER_TIMEOUT_SECONDS`), instead of MLflow's own
minutes of retries per write. At the trial's end `flush` waits up to `FINAL_FLUSH_SECONDS` for the
server to come back.

    outbox = Outbox()
    outbox.send(lambda: client.log_batch(run_id, metrics=batch), "epoch 3 metrics")
    outbox.flush(FINAL_FLUSH_SECONDS)
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable

SERVER_TIMEOUT_SECONDS = 5  # one request to the tracking server while training, at most
RETRY_AFTER_SECONDS = 10  # while the server is away, between tries to replay the waiting writes
FINAL_FLUSH_SECONDS = 300  # at the trial's end: how long to wait for a lost server to return
POLL_SECONDS = 2  # between tries while waiting for the server


class TrackingUnavailable(RuntimeError):
    """The tracking server did not come back in time; the message says what was not recorded."""


def shorten_http_waits() -> None:
    """MLflow's HTTP client retries a lost server for minutes by default; in a trial's process one
    short try is enough, the outbox does the rest. Read by MLflow at each request."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(SERVER_TIMEOUT_SECONDS)


class Outbox:
    def __init__(self):
        self.pending: deque[tuple[Callable[[], object], str]] = deque()
        self.offline_since: float | None = None
        self.last_try = 0.0  # time.monotonic() of the last failed try

    def send(self, call: Callable[[], object], what: str) -> None:
        """Write now if the server takes it and nothing waits before it; else keep it for later."""
        if self.pending:
            due = time.monotonic() - self.last_try >= RETRY_AFTER_SECONDS
            if not (due and self.try_flush()):
                self.pending.append((call, what))
                return
        try:
            call()
        except Exception as err:  # connection refused, timeout, 5xx: all mean "not now"
            self._went_offline(err, what)
            self.pending.append((call, what))

    def try_flush(self) -> bool:
        """One pass over the waiting writes, oldest first, stopping at the first refusal."""
        while self.pending:
            call, what = self.pending[0]
            try:
                call()
            except Exception as err:
                self._went_offline(err, what)
                return False
            self.pending.popleft()
        if self.offline_since is not None:
            print(f"tracking server back after {time.time() - self.offline_since:.0f} s: the "
                  "waiting records were written", file=sys.stderr)
            self.offline_since = None
        return True

    def flush(self, timeout: float) -> None:
        """Write everything still waiting, polling for the server up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.try_flush():
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(
                    f"the tracking server was unreachable for {timeout:.0f} s at the trial's end; "
                    f"not recorded: {', '.join(what for _, what in self.pending)}")
            time.sleep(POLL_SECONDS)

    def _went_offline(self, err: Exception, what: str) -> None:
        self.last_try = time.monotonic()
        if self.offline_since is None:
            self.offline_since = time.time()
            first_line = (str(err).strip().splitlines() or [""])[0][:200]
            print(f"tracking server unreachable ({type(err).__name__}: {first_line}); training "
                  f"goes on and the records wait, starting with {what}", file=sys.stderr)


def patient(call: Callable[[], object], timeout: float = FINAL_FLUSH_SECONDS):
    """`call()` retried while it fails, up to `timeout` seconds: for the few writes a trial cannot
    do without (finding or creating its run), made before any training."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_SECONDS)
