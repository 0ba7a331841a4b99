"""Tune callbacks on the driver: what the trials cannot do themselves.

`ConsoleCallback` turns Tune's trial events into the sweep's console lines (sweeps/console.py).
`TrialStatusCallback` corrects child-run statuses in MLflow: a trial that ASHA stopped early is
FINISHED and tagged `stopped_early`; an errored trial is FAILED with the reason.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from ray import tune

from genmodels.names import FAILURE_TAG, STATUS_TAG, STOPPED_EARLY
from sweeps.console import Progress, reason_of
from trainables.tracking import SweepRecords, find_trial_run, retry


class ConsoleCallback(tune.Callback):
    """One line per trial event and a summary line now and then (see sweeps/console.py)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.progress.epoch(trial.trial_id, result.get("training_iteration", 0), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        self.progress.ended(trial.trial_id, epochs)

    def on_trial_error(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        self.progress.ended(trial.trial_id, epochs, reason_of(getattr(trial, "error_file", None)))

    def on_step_end(self, iteration, trials, **info):
        self.progress.maybe_summary()

    def on_experiment_end(self, trials, **info):
        self.progress.summary()


class TrialStatusCallback(tune.Callback):
    """Driver-side corrections of child-run statuses that a trial cannot make itself."""

    def __init__(self, tracking: SweepRecords, epochs: int):
        self.tracking, self.epochs = tracking, epochs

    def _run_id(self, trial) -> str | None:
        client = MlflowClient(self.tracking.uri)
        return find_trial_run(client, self.tracking.experiment_id, trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        if run_id is None:
            return
        client = MlflowClient(self.tracking.uri)
        done = (trial.last_result or {}).get("training_iteration", 0)
        if done < self.epochs:  # the scheduler stopped it: a true, finished, shorter run
            retry(lambda: client.set_tag(run_id, STATUS_TAG, STOPPED_EARLY))
            retry(lambda: client.set_terminated(run_id, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        if run_id is None:
            return
        client = MlflowClient(self.tracking.uri)
        if retry(lambda: client.get_run(run_id)).info.status == "RUNNING":
            retry(lambda: client.set_tag(run_id, FAILURE_TAG,
                                         str(getattr(trial, "error_file", "") or "trial error")))
            retry(lambda: client.set_terminated(run_id, "FAILED"))
