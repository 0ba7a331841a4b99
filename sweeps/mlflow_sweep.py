"""MLflow on the driver's side: the experiment, the sweep's parent run, and true run statuses.

- Where: `--mlflow-uri`, else $MLFLOW_TRACKING_URI, else SQLite `mlflow.db` in the working folder
  (artifacts in `mlruns/` beside it), so `mlflow ui` shows the sweep with no server.
- The store is checked (and the default one made) before anything starts: `sweeps/store.py`.
  A remote server's artifacts are proxied (`mlflow server --serve-artifacts`), so no record
  depends on a node's disk.
- `sweeps/callbacks.py` closes what a trial cannot close itself (early stops, errors).
- `close_sweep` marks the parent FINISHED, or, after Ctrl-C / SIGTERM, the parent and every
  still-RUNNING child KILLED (`gensweep.status` unfinished), so nothing stays RUNNING.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from genmodels.names import (
    CHECKPOINT_FILE,
    EXPERIMENT_KIND_TAG,
    FAILED,
    FAILURE_TAG,
    MEMBER_IDS_KEY,
    MODEL_TAG,
    MODEL_TRAINING_KIND,
    NOTE_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    SAMPLED_TAG,
    STATUS_TAG,
    SWEEP_DIR_TAG,
    TRIAL_ID_TAG,
    UNFINISHED,
)
from trainables.mlflow_trial import SweepRecords, all_runs, not_yet_logged, retry

SWEEP_NOTE = (
    "The sweep. Its trials are the child runs below it (expand this run, or select them) with "
    "their hyperparameters as params and `{metric}` per epoch: the Chart view compares them; "
    "each trial's `samples` image steps through its epochs. Here: the options, "
    "search_space.txt, leaderboard.csv, best_config.json and the best model (best_model/).")
BEST_MODEL_DIR = "best_model"  # the parent run's artifacts: weights.pt and model.json
# The trials' view in the MLflow UI, saved on the experiment with the UI's own "share view" mechanism
# (an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON; the link names the key).
# Unsorted, the UI shows a sweep as its parent run with the trials folded inside; sorted by the
# objective it lists every trial with the chosen columns.
TRIALS_VIEW_KEY = "gensweep"
UI_DEFAULT_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
UNCLOSED_REASON = ("the trial ended without closing its run (the tracking server was unreachable "
                   "from it at its end): its results are in Ray's trial folder")


def save_trials_view(client: MlflowClient, experiment_id: str, metric: str, mode: str,
                     params: list[str]) -> None:
    """The experiment's trials view: sorted by `metric`, its validation and test values, the
    status, how each configuration was chosen and the searched `params` as columns, and charts of
    the val_* metrics per epoch."""
    test = metric.replace("val_", "test_", 1)
    view = {"orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min",
            "selectedColumns": [f"metrics.`{metric}`", f"metrics.`{test}`", f"tags.`{STATUS_TAG}`",
                                f"tags.`{SAMPLED_TAG}`"] + [f"params.`{p}`" for p in params],
            "chartsSearchFilter": "val_"}
    retry(lambda: client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{TRIALS_VIEW_KEY}",
                                            json.dumps(view)))


def trials_view_link(uri: str, experiment_id: str) -> str:
    """The UI's address of the trials view: on the tracking server, or where `mlflow ui` serves a
    local store by default."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT_URL
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={TRIALS_VIEW_KEY}")


def open_sweep(uri: str, name: str, model: str, experiment_dir: str, options: dict,
               space_text: str, resume: bool, mode: str = "max",
               searched: tuple[str, ...] = ()) -> SweepRecords:
    """The experiment (one per sweep name, with its trials view: `options["metric"]` in `mode`,
    the `searched` parameters) and the parent run; on --resume, the same parent."""
    client = MlflowClient(uri)
    experiment = retry(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):  # absolute, so trials in other folders write beside the db
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / name).as_uri()
        experiment_id = retry(lambda: client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}))
        save_trials_view(client, experiment_id, options["metric"], mode, list(searched))
    else:
        experiment_id = experiment.experiment_id
    parent_id = None
    if resume:
        runs = retry(lambda: client.search_runs(
            [experiment_id], filter_string=f"tags.`{SWEEP_DIR_TAG}` = '{experiment_dir}'",
            max_results=1))
        if runs:
            parent_id = runs[0].info.run_id
            retry(lambda: client.update_run(parent_id, status="RUNNING"))
    if parent_id is None:
        run = retry(lambda: client.create_run(experiment_id, tags={
            RUN_NAME_TAG: f"{name} (sweep)", SWEEP_DIR_TAG: experiment_dir, MODEL_TAG: model,
            NOTE_TAG: SWEEP_NOTE.format(metric=options.get("metric"))}))
        parent_id = run.info.run_id
        retry(lambda: client.log_batch(parent_id, params=[
            Param(k, str(v)) for k, v in options.items()]))
        retry(lambda: client.log_text(parent_id, space_text, "search_space.txt"))
    return SweepRecords(uri=uri, experiment_id=experiment_id, parent_run_id=parent_id, sweep=name,
                        model=model, experiment_dir=experiment_dir)


def log_best_model(tracking: SweepRecords, checkpoint) -> None:
    """The best trial's network (the VAE, or the GAN's generator) on the parent run under
    `best_model/`: its weights and config as plain files, no pickle; `genmodels.loop.load_model`
    rebuilds it (README, "Tracking with MLflow")."""
    from genmodels.loop import export_model

    client = MlflowClient(tracking.uri)
    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
        export_model(Path(folder) / CHECKPOINT_FILE, out)
        retry(lambda: client.log_artifacts(tracking.parent_run_id, out, BEST_MODEL_DIR))


def close_sweep(tracking: SweepRecords, results, interrupted: bool, metric: str, mode: str,
                leaderboard=None) -> None:
    """Leaderboard and best config on the parent; statuses made final (KILLED on interrupt).
    `leaderboard`: the ranked table of every configuration with the chosen trials' test numbers
    (sweeps/held_out.py); without it, Tune's own table of trials sorted by `metric`."""
    client = MlflowClient(tracking.uri)
    parent = tracking.parent_run_id
    if results is not None:
        frame = results.get_dataframe()
        if not frame.empty and metric in frame:
            frame = frame.sort_values(metric, ascending=(mode == "min"), na_position="last")
            table = frame if leaderboard is None else leaderboard
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "leaderboard.csv"
                table.to_csv(path, index=False)
                retry(lambda: client.log_artifact(parent, str(path)))
            if leaderboard is not None and not leaderboard.empty:
                top = leaderboard.iloc[0]  # the best by the validation objective
                tested = not_yet_logged(client, parent, {
                    f"best_{c}": float(top[c]) for c in leaderboard
                    if c.startswith("test_") and pd.notna(top[c])})
                if tested:  # MlflowClient has no log_metrics (that is the fluent API): one batch
                    now = int(pd.Timestamp.now().timestamp() * 1000)
                    batch = [Metric(k, v, now, 0) for k, v in tested.items()]
                    retry(lambda: client.log_batch(parent, metrics=batch))
            try:
                best = results.get_best_result(metric, mode)
                retry(lambda: client.log_text(parent, json.dumps(best.config, indent=2),
                                              "best_config.json"))
                retry(lambda: client.log_metric(parent, f"best_{metric}", best.metrics[metric]))
            except (RuntimeError, KeyError):
                best = None  # no trial reported the metric: the leaderboard says so
            if best is not None and best.checkpoint is not None and MEMBER_IDS_KEY not in best.config:
                try:
                    log_best_model(tracking, best.checkpoint)
                except Exception as err:  # the sweep's results are safe; say what is missing
                    print(f"warning: could not log the best model to MLflow: {err}",
                          file=sys.stderr)
    children = retry(lambda: client.search_runs(
        [tracking.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent}' and attributes.status = 'RUNNING'"))
    for run in children:
        run_id = run.info.run_id
        if interrupted:  # resumable: --resume continues the run
            retry(lambda r=run_id: client.set_tag(r, STATUS_TAG, UNFINISHED))
            retry(lambda r=run_id: client.set_terminated(r, "KILLED"))
        else:  # the trial ended but could not close its run: never leave it RUNNING
            retry(lambda r=run_id: client.log_batch(r, tags=[
                RunTag(STATUS_TAG, FAILED), RunTag(FAILURE_TAG, UNCLOSED_REASON)]))
            retry(lambda r=run_id: client.set_terminated(r, "FAILED"))
    retry(lambda: client.set_terminated(parent, "KILLED" if interrupted else "FINISHED"))


def tag_sampled(tracking: SweepRecords, kinds: dict[str, str]) -> None:
    """Each trial's run gets how its configuration was chosen (SAMPLED_TAG: default, random or
    guided; sweeps/sampling.py), so the MLflow UI can filter by it. Runs already tagged (a
    resumed sweep's earlier trials) are left alone."""

    client = MlflowClient(tracking.uri)
    query = f"tags.`{PARENT_RUN_TAG}` = '{tracking.parent_run_id}'"
    for run in retry(lambda: all_runs(client, tracking.experiment_id, query)):
        tags = run.data.tags
        kind = kinds.get(tags.get(TRIAL_ID_TAG))
        if kind is not None and tags.get(SAMPLED_TAG) != kind:
            retry(lambda r=run.info.run_id, k=kind: client.set_tag(r, SAMPLED_TAG, k))
