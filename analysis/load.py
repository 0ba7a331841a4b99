"""Load a sweep's trials into pandas, from MLflow or from Ray Tune's results folder.

    from analysis import load_trials, load_history
    trials = load_trials(results="runs/sweeps/vae-sweep")                  # Ray's folder
    trials = load_trials(experiment="vae-sweep", tracking_uri="sqlite:///mlflow.db")  # MLflow
    history = load_history(results="runs/sweeps/vae-sweep")                # per-epoch, long form

Both sources are read into the same per-trial records (results/folder.py,
analysis/mlflow_runs.py) and turned into the table by one function (results/table.py), so the same
sweep gives the same table from either (only `run_id`, MLflow's, and the wording of a failure's
`error` differ). One row per trial:

| column | dtype | meaning |
| --- | --- | --- |
| `trial_id` | string | Ray's trial id (MLflow: the `ray.trial_id` tag) |
| `status` | string | finished, stopped_early (by ASHA), failed, diverged, unfinished (interrupted) |
| `model` | string | vae or gan |
| `config/<name>` | Int64 / float64 | each searched hyperparameter |
| `sampled` | string | default, random (TPE's start-up) or guided (TPE's guess): sweeps/sampling.py |
| `<metric>` | float64 | the last value the trial reported (every metric of the model, NaN if never) |
| `best_<metric>` | float64 | the best over the epochs, for metrics with a direction (ranking.DIRECTIONS) |
| `best_epoch` | Int64 | the epoch of the best value of the objective (`metric`) |
| `epochs` | Int64 | epochs completed |
| `duration_s` | float64 | training time the trial measured (sum of its `epoch_seconds`) |
| `figures_dir` | string | the trial's folder: samples/epoch_NNN.png, samples_across_epochs.png, ... |
| `run_id` | string | the trial's MLflow run (NA when read from Ray's folder) |
| `error` | string | why it failed or diverged (NA otherwise) |

Ray's folder is read as files (`params.json`, the JSON-lines `result.json`, the trainable's
`status.json`, Ray's `error.txt` and the newest `experiment_state-*.json` for the trial statuses), so
no Ray process is needed and a folder copied off a cluster reads the same.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from analysis.mlflow_runs import read_mlflow
from genmodels import names
from results.folder import read_ray_folder
from results.table import LoadError, Sweep, build_sweep

__all__ = ["LoadError", "Sweep", "load_history", "load_sweep", "load_trials"]


def load_sweep(results: str | Path | None = None, *, experiment: str | None = None,
               tracking_uri: str | None = None, metric: str | None = None,
               mode: str | None = None) -> Sweep:
    """Trials and history of one sweep from Ray's folder (`results`) or MLflow (`experiment`).

    metric: the objective for `best_epoch` and ranking (default: the metric the sweep optimized,
    else the model's default, val_elbo or val_fcd). mode: "max"/"min" for a metric not in DIRECTIONS.
    """
    if (results is None) == (experiment is None):
        raise ValueError("pass exactly one source: results=<Ray results folder> or "
                         "experiment=<MLflow experiment name>")
    if results is not None:
        records, options, location = read_results(str(results))
        model = next((m for m, metrics in names.MODEL_METRICS.items()
                      if options.get("metric") in metrics), None)
        return build_sweep(records, location.rstrip("/").rsplit("/", 1)[-1], model,
                           metric or options.get("metric"), mode,
                           {"results": location, "options": options})
    uri = names.tracking_uri(tracking_uri)
    records, model, source = read_mlflow(experiment, uri)
    return build_sweep(records, experiment, model, metric or source.get("metric"), mode, source)


def read_results(results: str) -> tuple[list, dict, str]:
    """Ray's folder of a sweep: a local folder, or a cloud URI (--storage-path s3://...), whose
    small files are read from a temporary local copy; each trial's `figures_dir` is then its URI.
    Returns the records, the sweep's options and where the folder is."""
    from sweeps.storage import QUERY_REFUSED, SweepFolder, storage_uri

    location = storage_uri(results)
    if "://" not in location:
        return *read_ray_folder(location), location
    if "?" in location:
        raise LoadError(f"cannot read the sweep folder {results}: {QUERY_REFUSED}")

    with tempfile.TemporaryDirectory(prefix="gensweep-results-") as tmp:
        try:
            storage = SweepFolder.reached(location)  # one that never answers: an error now
            mirror = storage.download_records(Path(tmp))
        except (OSError, ValueError) as err:  # pyarrow's: unreachable, denied, not found, bad URI
            raise LoadError(f"cannot read the sweep folder {results}: "
                            f"{' '.join(str(err).split())[:300]}") from err
        records, options = read_ray_folder(mirror)
    for record in records:
        if record.figures_dir:
            record.figures_dir = record.figures_dir.replace(str(mirror), storage.location, 1)
    return records, options, storage.location


def load_trials(results: str | Path | None = None, *, experiment: str | None = None,
                tracking_uri: str | None = None, metric: str | None = None,
                mode: str | None = None) -> pd.DataFrame:
    """One row per trial (see the module docstring for the columns), sorted by trial id."""
    return load_sweep(results, experiment=experiment, tracking_uri=tracking_uri, metric=metric,
                      mode=mode).trials


def load_history(results: str | Path | None = None, *, experiment: str | None = None,
                 tracking_uri: str | None = None) -> pd.DataFrame:
    """Every trial's per-epoch metrics in long form: trial_id, epoch, metric, value."""
    return load_sweep(results, experiment=experiment, tracking_uri=tracking_uri).history
