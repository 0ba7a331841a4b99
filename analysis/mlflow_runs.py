"""Read a sweep's MLflow records: the experiment (the sweep's name), its parent run and one child
run per trial, as sweeps/mlflow_sweep.py and trainables/mlflow_trial.py write them.
"""

from __future__ import annotations

from pathlib import Path

from genmodels.names import (
    DIVERGED,
    FAILED,
    FAILURE_TAG,
    FINISHED,
    GROUP_TAG,
    MODEL_TAG,
    PARENT_RUN_TAG,
    SAMPLED_TAG,
    STATUS_TAG,
    STATUSES,
    SWEEP_DIR_TAG,
    TRIAL_DIR_TAG,
    TRIAL_ID_TAG,
    UNFINISHED,
)
from results.table import ERROR_CHARS, TEST_PREFIX, LoadError, TrialRecord
from sweeps.search_space import SPACES  # the one definition of what a sweep searches
from trainables.mlflow_trial import all_runs


def parse_param(text: str):
    """MLflow keeps params as strings; read back the number or flag the trial was given."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "None" else text


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise LoadError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run from the folder "
                        "the sweep ran in, or pass the tracking URI the sweep used (--mlflow-uri)")
    return MlflowClient(uri)


def searched_keys(model: str, params: dict) -> list[str]:
    """The hyperparameters the sweep searched (the runs also log the fixed ones and `train.*`)."""
    return [k for k in SPACES[model] if k in params]


def mlflow_status(run) -> str:
    tag = run.data.tags.get(STATUS_TAG)
    if run.info.status == "FAILED":
        return DIVERGED if tag == DIVERGED else FAILED
    if run.info.status in ("RUNNING", "SCHEDULED", "KILLED"):
        return UNFINISHED
    return tag if tag in STATUSES else FINISHED


def trial_folder(trial_dir: str | None, sweep_dir: str | None, group: str | None = None) -> str | None:
    """Where the trial's files are kept: `<sweep_dir>/<its name>`, or for a fused member
    `<sweep_dir>/<its group's folder>/<member>`. (Runs of older sweeps hold Ray's `ray.trial_dir`,
    the trial's working folder on its node, synced to the sweep's folder under the same name.)"""
    if trial_dir is None or sweep_dir is None:
        return trial_dir
    name = Path(trial_dir).name
    return f"{sweep_dir.rstrip('/')}/{f'{group}/{name}' if group else name}"


def read_mlflow_run(client, run, model: str, sweep_dir: str | None) -> TrialRecord:
    epochs: dict[int, dict] = {}
    # The test split's numbers are logged once, for the sweep's chosen trials: not epochs.
    test = {name: value for name, value in run.data.metrics.items() if name.startswith(TEST_PREFIX)}
    for name in run.data.metrics:
        if name in test:
            continue
        for point in client.get_metric_history(run.info.run_id, name):
            epochs.setdefault(int(point.step), {"epoch": int(point.step)})[name] = point.value
    params = run.data.params
    tags = run.data.tags
    error = tags.get(FAILURE_TAG)
    return TrialRecord(
        trial_id=tags.get(TRIAL_ID_TAG, run.info.run_id), status=mlflow_status(run),
        config={k: parse_param(params[k]) for k in searched_keys(model, params)},
        history=[epochs[e] for e in sorted(epochs)],
        figures_dir=trial_folder(tags.get(TRIAL_DIR_TAG), sweep_dir, tags.get(GROUP_TAG)),
        run_id=run.info.run_id, error=error[:ERROR_CHARS] if error else None, test=test,
        sampled=tags.get(SAMPLED_TAG))


def read_mlflow(experiment: str, uri: str) -> tuple[list[TrialRecord], str | None, dict]:
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LoadError(f"no MLflow experiment {experiment!r} in {uri}; it has {names}. The "
                        "experiment is the sweep's --name")
    runs = all_runs(client, found.experiment_id)
    parents = [r for r in runs if PARENT_RUN_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_RUN_TAG in r.data.tags]
    if not children:
        raise LoadError(f"MLflow experiment {experiment!r} has no trial runs yet")
    models = {r.data.tags.get(MODEL_TAG) for r in runs} - {None}
    if len(models) > 1:
        raise LoadError(f"experiment {experiment!r} mixes models {sorted(models)}")
    model = models.pop() if models else None
    if model is None:
        raise LoadError(f"experiment {experiment!r} was not written by a gensweep sweep "
                        f"(no {MODEL_TAG} tag)")
    parent = max(parents, key=lambda r: r.info.start_time, default=None)
    source = {"experiment": experiment, "uri": uri, "experiment_id": found.experiment_id,
              "parent_run_id": parent.info.run_id if parent else None,
              "metric": parent.data.params.get("metric") if parent else None}
    sweep_dir = parent.data.tags.get(SWEEP_DIR_TAG) if parent else None
    return [read_mlflow_run(client, r, model, sweep_dir) for r in children], model, source
