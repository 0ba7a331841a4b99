"""MLflow on the driver's side: the experiment, the sweep's parent run, and true run statuses.

- Where: `--mlflow-uri`, else $MLFLOW_TRACKING_URI, else SQLite `mlflow.db` in the working folder
  (artifacts in `mlruns/` beside it), so `mlflow ui` shows the sweep with no server.
- A remote server must answer before anything starts; its artifacts are proxied
  (`mlflow server --serve-artifacts`), so no record depends on a node's disk.
- `sweeps/callbacks.py` closes what a trial cannot close itself (early stops, errors).
- `close_sweep` marks the parent FINISHED, or, after Ctrl-C, the parent and every still-RUNNING
  child KILLED, so nothing stays RUNNING.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from genmodels.names import (
    CHECKPOINT_FILE,
    MODEL_TAG,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    SWEEP_DIR_TAG,
    TRACKING_URI_ENV,
)
from trainables.tracking import SweepRecords, retry

REACH_TIMEOUT_SECONDS = 5


class TrackingError(RuntimeError):
    pass


def check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urlopen(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_SECONDS) as response:
            response.read()
    except (URLError, OSError) as err:
        raise TrackingError(
            f"the MLflow tracking server {uri} does not answer ({err}); start it with "
            "`mlflow server --host 0.0.0.0 --port 5000 --serve-artifacts`, or drop --mlflow-uri "
            "to record in the local mlflow.db"
        ) from err


def open_sweep(uri: str, name: str, model: str, experiment_dir: str, options: dict,
               space_text: str, resume: bool) -> SweepRecords:
    """The experiment (one per sweep name) and the parent run; on --resume, the same parent."""
    check_reachable(uri)
    client = MlflowClient(uri)
    experiment = retry(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):  # absolute, so trials in other folders write beside the db
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / name).as_uri()
        experiment_id = retry(lambda: client.create_experiment(name, artifact_location=location))
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
            RUN_NAME_TAG: name, SWEEP_DIR_TAG: experiment_dir, MODEL_TAG: model}))
        parent_id = run.info.run_id
        retry(lambda: client.log_batch(parent_id, params=[
            Param(k, str(v)) for k, v in options.items()]))
        retry(lambda: client.log_text(parent_id, space_text, "search_space.txt"))
    return SweepRecords(uri=uri, experiment_id=experiment_id, parent_run_id=parent_id, sweep=name,
                        model=model, experiment_dir=experiment_dir)


def log_best_model(tracking: SweepRecords, checkpoint) -> None:
    """The best trial's network (the VAE, or the GAN's generator) with `mlflow.pytorch`."""
    import mlflow
    import mlflow.pytorch
    import torch

    from genmodels.gan import Generator
    from genmodels.vae import VAE, VAEConfig

    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    if state["model"] == "vae":
        model = VAE.from_config(VAEConfig(**state["model_config"]))
        model.load_state_dict(state["modules"]["model"])
    else:
        model = Generator(state["model_config"]["latent_dim"])
        model.load_state_dict(state["modules"]["generator"])
    before = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(tracking.uri)
    try:
        with mlflow.start_run(run_id=tracking.parent_run_id):
            # Naming the requirement skips MLflow's slow inference of the environment.
            # Pickled whole: loading it needs this package (`pip install gensweep`) importable.
            mlflow.pytorch.log_model(model.eval(), name="best_model",
                                     serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__}"])
    finally:
        if before is None:
            os.environ.pop(TRACKING_URI_ENV, None)


def close_sweep(tracking: SweepRecords, results, interrupted: bool, metric: str, mode: str) -> None:
    """Leaderboard and best config on the parent; statuses made final (KILLED on interrupt)."""
    client = MlflowClient(tracking.uri)
    parent = tracking.parent_run_id
    if results is not None:
        frame = results.get_dataframe()
        if not frame.empty and metric in frame:
            frame = frame.sort_values(metric, ascending=(mode == "min"), na_position="last")
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "leaderboard.csv"
                frame.to_csv(path, index=False)
                retry(lambda: client.log_artifact(parent, str(path)))
            try:
                best = results.get_best_result(metric, mode)
                retry(lambda: client.log_text(parent, json.dumps(best.config, indent=2),
                                              "best_config.json"))
                retry(lambda: client.log_metric(parent, f"best_{metric}", best.metrics[metric]))
            except (RuntimeError, KeyError):
                best = None  # no trial reported the metric: the leaderboard says so
            if best is not None and best.checkpoint is not None:
                try:
                    log_best_model(tracking, best.checkpoint)
                except Exception as err:  # the sweep's results are safe; say what is missing
                    print(f"warning: could not log the best model to MLflow: {err}",
                          file=sys.stderr)
    if interrupted:
        children = retry(lambda: client.search_runs(
            [tracking.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent}' and attributes.status = 'RUNNING'"))
        for run in children:
            retry(lambda r=run: client.set_terminated(r.info.run_id, "KILLED"))
    retry(lambda: client.set_terminated(parent, "KILLED" if interrupted else "FINISHED"))
