"""MLflow records of one trial: a child run of the sweep's parent run, from inside the trial.

Each trial logs its own params, per-epoch metrics (`step=epoch`) and per-epoch sample grid
(`log_image(key="samples", step=epoch)`), so the records travel from any node straight to the
tracking store; a trial restored from a checkpoint (retried after its worker died, or resumed)
finds its run by the `ray.trial_id` tag under the sweep's parent run and continues it instead of
creating a duplicate; epochs it retrains after the restore that it had logged before are not logged
again, so each epoch's metrics and sample grid are in the run exactly once.

A tracking server that goes away mid-trial stalls nothing: the epoch's writes wait in an outbox
(trainables/outbox.py) and are replayed, in order, once it is back; an epoch pays at most one short
try per write. SQLite allows one writer at a time: every call goes through `retry`, which waits out
"database is locked" with backoff, and each epoch's metrics go in one `log_batch` call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image

from genmodels.names import (
    FAILED,
    FAILURE_TAG,
    GROUP_TAG,
    MODEL_TAG,
    NODE_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_DIR_TAG,
    TRIAL_ID_TAG,
)
from trainables.outbox import FINAL_FLUSH_SECONDS, Outbox, TrackingUnavailable, patient, shorten_http_waits

RETRIES = 8
EPOCH_METRIC = "epoch_seconds"  # logged every epoch by both models: its steps are the epochs logged
IMAGE_KEY = "samples"  # the per-epoch sample grid's log_image key
RETRY_BASE_SECONDS = 0.25  # doubled after each failed try
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag's value (8000 on some stores): keep the start
T = TypeVar("T")


def retry(call: Callable[[], T]) -> T:
    """Run a tracking call, retrying while SQLite reports a lock held by another writer."""
    for attempt in range(RETRIES):
        try:
            return call()
        except Exception as err:  # MlflowException / sqlalchemy OperationalError
            if "locked" not in str(err).lower() or attempt == RETRIES - 1:
                raise
            time.sleep(RETRY_BASE_SECONDS * 2**attempt)
    raise AssertionError("unreachable")


def all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment that `filter_string` selects, page after page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


@dataclass(frozen=True)
class SweepRecords:
    """Where a sweep's trials record themselves (sweeps/mlflow_sweep.py:open_sweep makes it; every
    trial gets it with its inputs)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str  # the sweep's name, also its MLflow experiment
    model: str
    experiment_dir: str  # the sweep's folder in Ray's storage


def not_yet_logged(client: MlflowClient, run_id: str, values: dict[str, float]) -> dict[str, float]:
    """`values` less those the run already holds with the same value: a step run again (a finished
    sweep resumed) logs no number twice."""
    logged = retry(lambda: client.get_run(run_id)).data.metrics
    return {name: value for name, value in values.items() if logged.get(name) != value}


def find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str,
                   parent_run_id: str | None = None) -> str | None:
    """The trial's run, under the sweep's parent run when given: a copied sweep folder resumed
    into a new parent never continues (or closes) the original sweep's runs."""
    query = f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'"
    if parent_run_id:
        query += f" and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    runs = retry(lambda: client.search_runs([experiment_id], filter_string=query, max_results=1))
    return runs[0].info.run_id if runs else None


def image_step(artifact_path: str) -> int | None:
    """The step of a `log_image(key=..., step=...)` file, images/samples+step+2+timestamp+...png
    (older MLflow wrote % for +); the compressed .webp twin is not counted."""
    name = Path(artifact_path).name
    parts = name.replace("%", "+").split("+")
    if (name.endswith(".png") and len(parts) > 2 and parts[0] == IMAGE_KEY
            and parts[1] == "step" and parts[2].isdigit()):
        return int(parts[2])
    return None


class TrialTracker:
    """One trial's MLflow run: `log_epoch` each epoch, then `finish` or `fail` once."""

    def __init__(self, client: MlflowClient, run_id: str, metric_steps: set[int] | None = None,
                 image_steps: set[int] | None = None):
        self.client, self.run_id = client, run_id
        # Epochs already in a continued run (or waiting in the outbox): not logged twice.
        self.metric_steps, self.image_steps = metric_steps or set(), image_steps or set()
        self.outbox = Outbox()

    @classmethod
    def continued(cls, client: MlflowClient, run_id: str) -> TrialTracker:
        history = patient(lambda: retry(lambda: client.get_metric_history(run_id, EPOCH_METRIC)))
        images = patient(lambda: retry(lambda: client.list_artifacts(run_id, "images")))
        image_steps = {s for s in (image_step(a.path) for a in images) if s is not None}
        patient(lambda: retry(lambda: client.update_run(
            run_id, status=RunStatus.to_string(RunStatus.RUNNING))))
        return cls(client, run_id, {m.step for m in history}, image_steps)

    @classmethod
    def start(cls, tracking: SweepRecords, trial_dir: Path, model_cfg, train_cfg,
              member: str | None = None, group: str | None = None) -> TrialTracker:
        """The trial's run, created or (restored trial) found again. For a member of a fused
        group, `member` names it: its run is the member's own, tagged with its `group`."""
        import ray
        from ray import tune

        if tracking.uri.startswith(("http://", "https://")):
            shorten_http_waits()
        context = tune.get_context()
        client = MlflowClient(tracking.uri)
        trial_id, run_name, folder = context.get_trial_id(), context.get_trial_name(), trial_dir.name
        if member is not None:
            trial_id, run_name, folder = f"{trial_id}-{member}", f"{run_name}-{member}", f"{folder}/{member}"
        # Before any training: wait (bounded) for a server that is away, rather than fail.
        run_id = patient(lambda: find_trial_run(client, tracking.experiment_id, trial_id,
                                                tracking.parent_run_id))
        if run_id is not None:  # restored or retried: continue the same run
            return cls.continued(client, run_id)
        tags = {
            PARENT_RUN_TAG: tracking.parent_run_id,
            RUN_NAME_TAG: run_name,
            TRIAL_ID_TAG: trial_id,
            # Where the trial's results are stored (the sweep's storage), not the node's staging
            # folder that Tune syncs from.
            TRIAL_DIR_TAG: f"{tracking.experiment_dir}/{folder}",
            NODE_TAG: ray.get_runtime_context().get_node_id(),
            SWEEP_TAG: tracking.sweep,
            MODEL_TAG: tracking.model,
        }
        if group is not None:
            tags[GROUP_TAG] = group
        run = patient(lambda: retry(lambda: client.create_run(tracking.experiment_id, tags=tags)))
        tracker = cls(client, run.info.run_id)
        params = {**model_cfg.to_dict(), **{f"train.{k}": v for k, v in train_cfg.to_dict().items()}}
        tracker.outbox.send(lambda: retry(lambda: client.log_batch(tracker.run_id, params=[
            Param(k, str(v)) for k, v in params.items()])), "params")
        return tracker

    def log_epoch(self, epoch: int, metrics: dict, grid: Path, figures: dict[str, Path]) -> None:
        now = int(time.time() * 1000)
        send = self.outbox.send
        if epoch not in self.metric_steps:
            batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"]
            send(lambda: retry(lambda: self.client.log_batch(self.run_id, metrics=batch)),
                 f"epoch {epoch} metrics")
            self.metric_steps.add(epoch)
        if epoch not in self.image_steps:
            with Image.open(grid) as image:
                image.load()
            send(lambda: retry(lambda: self.client.log_image(self.run_id, image, key=IMAGE_KEY,
                                                             step=epoch)),
                 f"epoch {epoch} samples")
            self.image_steps.add(epoch)
        for name, path in figures.items():  # the same artifact path each time: rewritten
            send(lambda p=path: retry(lambda: self.client.log_artifact(self.run_id, str(p),
                                                                       "figures")),
                 f"figure {name}")

    def finish(self, status: str) -> None:
        """`status`: finished, or stopped_early (by the scheduler)."""
        self.outbox.send(lambda: retry(lambda: self.client.set_tag(self.run_id, STATUS_TAG,
                                                                   status)), "status")
        self.outbox.send(lambda: retry(lambda: self.client.set_terminated(self.run_id,
                                                                          "FINISHED")), "end")
        self._flush()

    def fail(self, reason: str, status: str = FAILED) -> None:
        tags = [RunTag(STATUS_TAG, status), RunTag(FAILURE_TAG, reason[:MAX_TAG_CHARS])]
        self.outbox.send(lambda: retry(lambda: self.client.log_batch(self.run_id, tags=tags)),
                         "failure reason")
        self.outbox.send(lambda: retry(lambda: self.client.set_terminated(self.run_id, "FAILED")),
                         "end")
        self._flush()

    def _flush(self) -> None:
        """The trial ends: its waiting records go now (the server has FINAL_FLUSH_SECONDS to come
        back). If it does not, the training's results stand (Ray has them) and the driver closes
        the run as FAILED with the reason, rather than this healthy trial failing."""
        try:
            self.outbox.flush(FINAL_FLUSH_SECONDS)
        except TrackingUnavailable as err:
            print(f"warning: {err}", file=sys.stderr)


class NoTracker:
    """The do-nothing stand-in for a trial run without MLflow (`tracking=None`): the trainable
    calls the same three methods either way."""

    def log_epoch(self, epoch: int, metrics: dict, grid: Path, figures: dict[str, Path]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def fail(self, reason: str, status: str = FAILED) -> None:
        pass


def start_tracker(tracking: SweepRecords | None, trial_dir: Path, model_cfg, train_cfg,
                  member: str | None = None, group: str | None = None) -> TrialTracker | NoTracker:
    if tracking is None:
        return NoTracker()
    return TrialTracker.start(tracking, trial_dir, model_cfg, train_cfg, member, group)
