"""Ctrl-C and SIGTERM, from a sweep script's first line to its last.

A terminal's Ctrl-C sends SIGINT to the process group; `kill`, `timeout` and cluster schedulers
send SIGTERM to the process. Either ends a sweep with exit code 130 (SIGINT) or 143 (SIGTERM),
one line saying what the stop left and how to go on, and no traceback:

- while the trials run, the first signal is handed to Tune, which stops gracefully (saves the
  experiment, unfinished trials stay resumable) and returns what it has; the sweep closes its
  records KILLED and says how to --resume;
- at any other moment (imports, store creation, Ray's start-up, the final test, the report) it
  raises `Stopped` in the main thread, and the runner closes the records and ends the Ray it
  started on the way out;
- a second signal always raises `Stopped` at once.

Only the standard library here: the sweep scripts install this before importing anything heavy.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, Ctrl-C: unfinished trials resumable, runs KILLED
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, SIGTERM (`timeout`, a cluster scheduler): the same
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
NOT_STARTED = "nothing had started; run the same command again"


def exit_code(signum: int | None) -> int:
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


class Stopped(BaseException):
    """A stop signal outside Tune's graceful stop. A BaseException, as KeyboardInterrupt is, so
    no library's `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(SIGNAL_NAMES.get(signum, f"signal {signum}"))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class StopSignals:
    """Handles SIGINT and SIGTERM while entered (restoring the previous handlers on exit) and
    remembers the first that came: the callbacks read `received` to tell an interrupted trial
    from one the scheduler stopped. Inside `tune_stops()` a first signal is Tune's to handle.
    `leaves` says what a stop now would leave, and what to do next; the runner keeps it true."""

    def __init__(self):
        self.received: int | None = None
        self.leaves = NOT_STARTED
        self._to_tune = False
        self._deferring = False
        self._lost = False  # a Stopped raised where Python only reports it (a __del__, a GC callback)

    def __enter__(self) -> StopSignals:
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self.previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self.previous_hook

    def reinstall(self) -> None:
        """Take the signals back from a library that set its own handlers."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, Stopped):
            self._lost = True  # no traceback: check() raises it again where it can propagate
        else:
            self.previous_hook(unraisable)

    def check(self) -> None:
        """Raise the Stopped that a signal raised where it could not propagate."""
        if self._lost:
            self._lost = False
            raise Stopped(self.received)

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        # Tune registers its stop handler on SIGUSR1 during fit(): the same graceful stop as its
        # own Ctrl-C handler (turned off in tune_stops), which would hide which signal came.
        tune = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if first and self._to_tune and tune:
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        if first and self._deferring:
            return  # raised when the deferred work is done
        raise Stopped(self.received)

    @contextmanager
    def deferred(self):
        """A first signal inside waits for the block to end, then raises Stopped: for work that,
        cut off half-way, leaves a mess (Ray's start-up). A second one raises at once."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False
        if self.received is not None:
            self._lost = False
            raise Stopped(self.received)

    @contextmanager
    def tune_stops(self):
        """`with stop.tune_stops(): tuner.fit()`: a first signal stops Tune gracefully."""
        self.check()
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._to_tune = True
        try:
            yield self
        finally:
            self._to_tune = False

    def exit_code(self) -> int:
        return exit_code(self.received)

    def __getstate__(self) -> dict:
        # Tune pickles the callbacks that hold this (tuner.pkl); the handlers stay with the process.
        return {"received": None, "leaves": NOT_STARTED, "_to_tune": False, "_deferring": False,
                "_lost": False}


def launch(model: str) -> None:
    """A sweep script's main: the signals are handled before the sweep's (heavy) imports start."""
    with StopSignals():
        try:
            from sweeps.runner import run

            code = run(model, sys.argv[1:])
        except Stopped as err:  # during the imports, before run() took over
            print(f"stopped by {err}: {NOT_STARTED}", file=sys.stderr)
            code = err.exit_code
    sys.exit(code)
