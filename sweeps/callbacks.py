"""Tune callbacks on the driver: what the trials cannot do themselves.

`ConsoleCallback` turns Tune's trial events into the sweep's console lines (sweeps/console.py).
`TrialStatusCallback` corrects child-run statuses in MLflow: a trial that ASHA stopped early is
FINISHED and tagged `stopped_early`; a trial that errored for good (its retries used up) is FAILED
with the error's message as `gensweep.failure_reason` and `gensweep.status` failed or diverged, and
gets a run even if its worker died before it could make one.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from genmodels.names import (
    DIVERGED,
    FAILED,
    FAILURE_TAG,
    FINISHED,
    MEMBER_RESULTS_KEY,
    MODEL_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    STATUS_TAG,
    STOPPED_EARLY,
    SWEEP_TAG,
    TRIAL_ID_TAG,
)
from sweeps.console import Progress, reason_of
from trainables.mlflow_trial import MAX_TAG_CHARS, SweepRecords, find_trial_run, retry

ERROR_SUFFIXES = ("Error", "Exception", "Diverged")  # exception class names in a traceback


def error_summary(text: str) -> str:
    """A trial's error from Ray's error.txt in one line: its last `SomeError: message` line (Ray
    wraps it in a traceback), else its first line."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("Failure #")]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").isidentifier() and head.endswith(ERROR_SUFFIXES):
            return line
    return lines[0] if lines else "trial error"


class ConsoleCallback(tune.Callback):
    """One line per trial event and a summary line now and then (see sweeps/console.py)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.looked_back = False  # (a --resume gets fresh callbacks: sweeps/tuner.py, resume_settings)

    def on_step_begin(self, iteration, trials, **info):
        self.look_back(trials)

    def look_back(self, trials) -> None:
        """On a --resume, Tune restores the trials that had ended, with no event for them."""
        if self.looked_back:
            return
        self.looked_back = True
        for trial in trials:
            if trial.status in (trial.TERMINATED, trial.ERROR):
                epochs = (trial.last_result or {}).get("training_iteration", 0)
                reason = (reason_of(getattr(trial, "error_file", None))
                          if trial.status == trial.ERROR else None)
                last = (trial.last_result or {}).get(self.progress.metric)
                members = (trial.last_result or {}).get(MEMBER_RESULTS_KEY)
                self.progress.ended_before(trial.trial_id, epochs, reason, last, members)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.progress.epoch(trial.trial_id, result.get("training_iteration", 0), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        self.progress.ended(trial.trial_id, epochs)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.progress.retrying(trial.trial_id, reason_of(getattr(trial, "error_file", None)))

    def on_trial_error(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        self.progress.ended(trial.trial_id, epochs, reason_of(getattr(trial, "error_file", None)))

    def on_step_end(self, iteration, trials, **info):
        self.progress.maybe_summary()

    def on_experiment_end(self, trials, **info):
        self.look_back(trials)  # a finished sweep resumed: Tune takes no step
        self.progress.summary()


class TrialStatusCallback(tune.Callback):
    """Driver-side corrections of child-run statuses that a trial cannot make itself. `stop` (the
    runner's StopSignals) tells a trial that Ctrl-C ended from one the scheduler stopped."""

    def __init__(self, tracking: SweepRecords, epochs: int, stop=None):
        self.tracking, self.epochs, self.stop = tracking, epochs, stop

    def _run_id(self, trial) -> str | None:
        client = MlflowClient(self.tracking.uri)
        return find_trial_run(client, self.tracking.experiment_id, trial.trial_id,
                              self.tracking.parent_run_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.stop is not None and self.stop.received is not None:
            return  # interrupted, not finished: close_sweep marks it KILLED
        run_id = self._run_id(trial)
        if run_id is None:
            return
        client = MlflowClient(self.tracking.uri)
        done = (trial.last_result or {}).get("training_iteration", 0)
        stopped = done < self.epochs  # the scheduler stopped it: a true, finished, shorter run
        # A trial that finished closes its own run, unless Tune ended its process first (seen on a
        # loaded machine): then the run would stay RUNNING and read as unfinished.
        if stopped or retry(lambda: client.get_run(run_id)).info.status == "RUNNING":
            retry(lambda: client.set_tag(run_id, STATUS_TAG, STOPPED_EARLY if stopped else FINISHED))
            retry(lambda: client.set_terminated(run_id, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        """Tune calls this once a trial has used up its retries (on_trial_recover before)."""
        text = ""
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        reason = error_summary(text)[:MAX_TAG_CHARS]
        status = DIVERGED if "TrainingDiverged" in text else FAILED
        client = MlflowClient(self.tracking.uri)
        run_id = self._run_id(trial)
        if run_id is None:  # its worker died before the trial could start its run
            run_id = retry(lambda: client.create_run(self.tracking.experiment_id, tags={
                PARENT_RUN_TAG: self.tracking.parent_run_id, RUN_NAME_TAG: str(trial),
                TRIAL_ID_TAG: trial.trial_id, SWEEP_TAG: self.tracking.sweep,
                MODEL_TAG: self.tracking.model})).info.run_id
            retry(lambda: client.log_batch(run_id, params=[
                Param(k, str(v)) for k, v in trial.config.items()]))
        # RUNNING: the trial could not close its run. KILLED: an interrupted sweep's run that this
        # --resume could not continue (e.g. its checkpoint is unreadable): now it has failed. A
        # run the trial closed itself (FAILED, with its own reason) is left as it is.
        if retry(lambda: client.get_run(run_id)).info.status in ("RUNNING", "KILLED"):
            retry(lambda: client.log_batch(run_id, tags=[RunTag(STATUS_TAG, status),
                                                         RunTag(FAILURE_TAG, reason)]))
            retry(lambda: client.set_terminated(run_id, "FAILED"))
