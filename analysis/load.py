"""Load a sweep's trials into pandas, from MLflow or from Ray Tune's results folder.

    from analysis import load_trials, load_history
    trials = load_trials(results="runs/sweeps/vae-sweep")                  # Ray's folder
    trials = load_trials(experiment="vae-sweep", tracking_uri="sqlite:///mlflow.db")  # MLflow
    history = load_history(results="runs/sweeps/vae-sweep")                # per-epoch, long form

Both sources are read into the same per-trial records and turned into the table by one function, so
the same sweep gives the same table from either (only `run_id`, MLflow's, and the wording of
`error` differ). One row per trial:

| column | dtype | meaning |
| --- | --- | --- |
| `trial_id` | string | Ray's trial id (MLflow: the `ray.trial_id` tag) |
| `status` | string | finished, stopped_early (by ASHA), failed, diverged, unfinished (interrupted) |
| `model` | string | vae or gan |
| `config/<name>` | Int64 / float64 | each searched hyperparameter |
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

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.ranking import DIRECTIONS, MODEL_METRICS, STATUSES, TIMING_METRICS, default_metric, direction

# Fields Ray Tune adds to every reported result: not metrics of the model.
RAY_RESULT_FIELDS = {
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
    "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "epoch", "experiment_tag", "episodes_total",
    "timesteps_total", "timesteps_since_restore", "warmup_time",
}
OPTIONS_FILE = "gensweep_options.json"  # written by sweeps/runner.py: the sweep's options
STATUS_FILE = "status.json"  # written by trainables/trainable.py: finished | diverged
ERROR_FILE = "error.txt"  # written by Ray for a trial that raised
PARENT_TAG = "mlflow.parentRunId"
SWEEP_DIR_TAG = "gensweep.sweep_dir"  # on the parent run: the sweep's Ray results folder
ERROR_CHARS = 500  # an error message is cut to this in the table; the full text stays on disk
HISTORY_COLUMNS = {"trial_id": "string", "epoch": "Int64", "metric": "string", "value": "float64"}


class LoadError(RuntimeError):
    """The sweep could not be found or read; the message says what to pass instead."""


@dataclass
class TrialRecord:
    """One trial as read from a source, before it becomes a row."""

    trial_id: str
    status: str
    config: dict
    history: list[dict]  # one dict per epoch: {"epoch": n, metric: value, ...}
    figures_dir: str | None
    run_id: str | None = None
    error: str | None = None


@dataclass
class Sweep:
    """A loaded sweep: its trials, its history, and where it came from."""

    name: str
    model: str
    metric: str
    mode: str
    trials: pd.DataFrame
    history: pd.DataFrame
    source: dict = field(default_factory=dict)  # {"results": path} or {"experiment", "uri"}


# --- the shared builder ------------------------------------------------------------------------

def typed_column(values: list) -> pd.Series:
    """One stable dtype per hyperparameter: Int64 for whole numbers, float64, boolean, or string."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="float64")
    return pd.Series([None if v is None else str(v) for v in values], dtype="string")


def metric_names(model: str, records: list[TrialRecord]) -> list[str]:
    """The model's metrics, the timings, then anything else reported, in that stable order."""
    known = [*MODEL_METRICS[model], *TIMING_METRICS]
    seen = {k for r in records for row in r.history for k in row if k != "epoch"}
    return known + sorted(seen - set(known))


def history_frame(records: list[TrialRecord]) -> pd.DataFrame:
    rows = [(r.trial_id, row["epoch"], name, value)
            for r in records for row in r.history for name, value in row.items()
            if name != "epoch" and value is not None]
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).astype(HISTORY_COLUMNS)
    return frame.sort_values(["trial_id", "epoch", "metric"], kind="mergesort").reset_index(drop=True)


def trials_frame(records: list[TrialRecord], model: str, metric: str, mode: str) -> pd.DataFrame:
    names = metric_names(model, records)
    directed = [n for n in names if n in DIRECTIONS]
    keys = sorted({k for r in records for k in r.config})
    records = sorted(records, key=lambda r: r.trial_id)
    columns: dict[str, pd.Series] = {
        "trial_id": pd.Series([r.trial_id for r in records], dtype="string"),
        "status": pd.Series([r.status for r in records], dtype="string"),
        "model": pd.Series([model] * len(records), dtype="string"),
    }
    for key in keys:
        columns[f"config/{key}"] = typed_column([r.config.get(key) for r in records])
    per_trial = [pd.DataFrame(r.history, columns=["epoch", *names]).astype("float64")
                 .sort_values("epoch", kind="mergesort").reset_index(drop=True) for r in records]
    for name in names:
        columns[name] = pd.Series([last_value(h[name]) for h in per_trial], dtype="float64")
    for name in directed:
        best = [(h[name].max() if DIRECTIONS[name] == "max" else h[name].min()) for h in per_trial]
        columns[f"best_{name}"] = pd.Series(best, dtype="float64")
    if metric not in DIRECTIONS:  # an objective with a direction given by the caller
        columns[f"best_{metric}"] = pd.Series(
            [(h[metric].max() if mode == "max" else h[metric].min()) if metric in h else math.nan
             for h in per_trial], dtype="float64")
    columns["best_epoch"] = pd.Series([best_epoch(h, metric, mode) for h in per_trial], dtype="Int64")
    columns["epochs"] = pd.Series([int(h["epoch"].max()) if len(h) else 0 for h in per_trial],
                                  dtype="Int64")
    columns["duration_s"] = pd.Series(
        [h["epoch_seconds"].sum(min_count=1) if "epoch_seconds" in h else math.nan
         for h in per_trial], dtype="float64")
    columns["figures_dir"] = pd.Series([r.figures_dir for r in records], dtype="string")
    columns["run_id"] = pd.Series([r.run_id for r in records], dtype="string")
    columns["error"] = pd.Series([r.error for r in records], dtype="string")
    frame = pd.DataFrame(columns)
    front = ["trial_id", "status", "model", *[f"config/{k}" for k in keys], metric,
             f"best_{metric}", "best_epoch", "epochs", "duration_s"]
    front = [c for c in front if c in frame]
    return frame[front + [c for c in frame.columns if c not in front]]


def last_value(series: pd.Series) -> float:
    """The last reported value (GAN scores exist only on evaluation epochs)."""
    series = pd.to_numeric(series, errors="coerce").dropna()
    return float(series.iloc[-1]) if len(series) else math.nan


def best_epoch(history: pd.DataFrame, metric: str, mode: str):
    if metric not in history:
        return None
    values = pd.to_numeric(history[metric], errors="coerce")
    if values.isna().all():
        return None
    index = values.idxmax() if mode == "max" else values.idxmin()  # first of equal bests
    return int(history.loc[index, "epoch"])


def build_sweep(records: list[TrialRecord], name: str, model: str | None, metric: str | None,
                mode: str | None, source: dict) -> Sweep:
    model = model or infer_model(records)
    metric = metric or default_metric(model)
    mode = direction(metric, mode)
    return Sweep(name=name, model=model, metric=metric, mode=mode,
                 trials=trials_frame(records, model, metric, mode),
                 history=history_frame(records), source=source)


def infer_model(records: list[TrialRecord]) -> str:
    seen = {k for r in records for row in r.history for k in row}
    matches = [m for m, names in MODEL_METRICS.items() if seen & set(names)]
    if len(matches) != 1:
        raise LoadError("cannot tell whether this sweep is a VAE or a GAN sweep from its metrics "
                        f"({sorted(seen) or 'none reported'}); pass model='vae' or 'gan'")
    return matches[0]


# --- Ray Tune's results folder -----------------------------------------------------------------

def read_json_lines(path: Path) -> list[dict]:
    """result.json; a last line cut short by a killed trial is skipped, not fatal."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def ray_statuses(folder: Path) -> dict[str, str]:
    """Trial folder name -> Ray's status (TERMINATED, ERROR, RUNNING, PENDING, PAUSED), from the
    newest experiment_state file (plain JSON; the pickled parts are not needed)."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
        trials = [json.loads(entry[0]) for entry in trial_data]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        return {}
    return {t.get("relative_logdir", ""): t.get("status", "") for t in trials}


def trial_status(status_file: dict, error: bool, ray_status: str | None, epochs: int,
                 target_epochs: int | None) -> str:
    if status_file.get("status") == "diverged":
        return "diverged"
    if error or ray_status == "ERROR":
        return "failed"
    if status_file.get("status") == "finished":
        return "finished"
    if ray_status in ("RUNNING", "PENDING", "PAUSED"):
        return "unfinished"  # the sweep was interrupted; --resume continues it
    if target_epochs is not None and epochs >= target_epochs:
        return "finished"
    return "stopped_early"  # ended by the scheduler before the last epoch


def read_ray_trial(folder: Path, ray_status: str | None, target_epochs: int | None) -> TrialRecord:
    rows = read_json_lines(folder / "result.json")
    config = json.loads((folder / "params.json").read_text()) if (folder / "params.json").exists() \
        else (rows[-1].get("config", {}) if rows else {})
    history = [{"epoch": int(row.get("epoch", row.get("training_iteration"))),
                **{k: v for k, v in row.items()
                   if k not in RAY_RESULT_FIELDS and isinstance(v, (int, float))
                   and not isinstance(v, bool)}}
               for row in rows]
    status_path = folder / STATUS_FILE
    status_file = json.loads(status_path.read_text()) if status_path.exists() else {}
    error_path = folder / ERROR_FILE
    epochs = max((h["epoch"] for h in history), default=0)
    status = trial_status(status_file, error_path.exists(), ray_status, epochs, target_epochs)
    error = None
    if status == "diverged":
        error = status_file.get("message", "diverged")
    elif error_path.exists():
        lines = [line for line in error_path.read_text().splitlines() if line.strip()]
        error = lines[-1] if lines else "failed"
    trial_id = rows[-1]["trial_id"] if rows and "trial_id" in rows[-1] else folder.name.split("_")[2]
    return TrialRecord(trial_id=str(trial_id), status=status, config=config, history=history,
                       figures_dir=str(folder.resolve()),
                       error=error[:ERROR_CHARS] if error else None)


def trial_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and ((p / "params.json").exists() or (p / "result.json").exists()))


def read_ray_folder(results: str | Path) -> tuple[list[TrialRecord], dict]:
    folder = Path(results).expanduser()
    if not folder.is_dir():
        raise LoadError(f"no sweep folder {folder}: pass the sweep's folder, "
                        "<--storage-path>/<--name> (default runs/sweeps/<model>-sweep)")
    trials = trial_folders(folder)
    if not trials:
        raise LoadError(f"{folder} holds no trial folders (train_trial_*/ with params.json); pass "
                        "the sweep's folder, <--storage-path>/<--name>, not its parent or a trial")
    options_path = folder / OPTIONS_FILE
    options = json.loads(options_path.read_text()) if options_path.exists() else {}
    statuses = ray_statuses(folder)
    records = [read_ray_trial(t, statuses.get(t.name), options.get("epochs")) for t in trials]
    return records, options


# --- MLflow ------------------------------------------------------------------------------------

def default_tracking_uri() -> str:
    """The sweeps' default: $MLFLOW_TRACKING_URI, else ./mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


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


def all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def searched_keys(model: str, params: dict) -> list[str]:
    """The hyperparameters the sweep searched (the runs also log the fixed ones and `train.*`)."""
    from sweeps.search_space import SPACES  # the one definition of what a sweep searches

    return [k for k in SPACES[model] if k in params]


def mlflow_status(run) -> str:
    tag = run.data.tags.get("gensweep.status")
    if run.info.status == "FAILED":
        return "diverged" if tag == "diverged" else "failed"
    if run.info.status in ("RUNNING", "SCHEDULED", "KILLED"):
        return "unfinished"
    return tag if tag in STATUSES else "finished"


def trial_folder(trial_dir: str | None, sweep_dir: str | None) -> str | None:
    """Where the trial's files are kept: Ray's `ray.trial_dir` is the trial's working folder on its
    node (a temporary session folder when storage is local), synced to `<sweep_dir>/<its name>`."""
    if trial_dir is None or sweep_dir is None:
        return trial_dir
    return f"{sweep_dir.rstrip('/')}/{Path(trial_dir).name}"


def read_mlflow_run(client, run, model: str, sweep_dir: str | None) -> TrialRecord:
    epochs: dict[int, dict] = {}
    for name in run.data.metrics:
        for point in client.get_metric_history(run.info.run_id, name):
            epochs.setdefault(int(point.step), {"epoch": int(point.step)})[name] = point.value
    params = run.data.params
    tags = run.data.tags
    error = tags.get("gensweep.failure_reason")
    return TrialRecord(
        trial_id=tags.get("ray.trial_id", run.info.run_id), status=mlflow_status(run),
        config={k: parse_param(params[k]) for k in searched_keys(model, params)},
        history=[epochs[e] for e in sorted(epochs)],
        figures_dir=trial_folder(tags.get("ray.trial_dir"), sweep_dir),
        run_id=run.info.run_id, error=error[:ERROR_CHARS] if error else None)


def read_mlflow(experiment: str, uri: str) -> tuple[list[TrialRecord], str | None, dict]:
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LoadError(f"no MLflow experiment {experiment!r} in {uri}; it has {names}. The "
                        "experiment is the sweep's --name")
    runs = all_runs(client, found.experiment_id)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    if not children:
        raise LoadError(f"MLflow experiment {experiment!r} has no trial runs yet")
    models = {r.data.tags.get("gensweep.model") for r in runs} - {None}
    if len(models) > 1:
        raise LoadError(f"experiment {experiment!r} mixes models {sorted(models)}")
    model = models.pop() if models else None
    if model is None:
        raise LoadError(f"experiment {experiment!r} was not written by a gensweep sweep "
                        "(no gensweep.model tag)")
    parent = max(parents, key=lambda r: r.info.start_time, default=None)
    source = {"experiment": experiment, "uri": uri, "experiment_id": found.experiment_id,
              "parent_run_id": parent.info.run_id if parent else None,
              "metric": parent.data.params.get("metric") if parent else None}
    sweep_dir = parent.data.tags.get(SWEEP_DIR_TAG) if parent else None
    return [read_mlflow_run(client, r, model, sweep_dir) for r in children], model, source


# --- the public functions ----------------------------------------------------------------------

def load_sweep(results: str | Path | None = None, *, experiment: str | None = None,
               tracking_uri: str | None = None, metric: str | None = None,
               mode: str | None = None) -> Sweep:
    """Trials and history of one sweep from Ray's folder (`results`) or MLflow (`experiment`).

    metric: the objective for `best_epoch` and ranking (default: the metric the sweep optimized,
    else the model's default, test_elbo or fcd). mode: "max"/"min" for a metric not in DIRECTIONS.
    """
    if (results is None) == (experiment is None):
        raise ValueError("pass exactly one source: results=<Ray results folder> or "
                         "experiment=<MLflow experiment name>")
    if results is not None:
        records, options = read_ray_folder(results)
        model = next((m for m, names in MODEL_METRICS.items() if options.get("metric") in names),
                     None)
        return build_sweep(records, Path(results).name, model, metric or options.get("metric"),
                           mode, {"results": str(Path(results).expanduser().resolve()),
                                  "options": options})
    uri = tracking_uri or default_tracking_uri()
    records, model, source = read_mlflow(experiment, uri)
    return build_sweep(records, experiment, model, metric or source.get("metric"), mode, source)


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
