"""A trial as read from either source, and the one function that turns trials into the tables.

Both sources (results/folder.py, analysis/mlflow_runs.py) produce `TrialRecord`s; only the
functions here make DataFrames, so the same sweep gives the same table from either.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from genmodels.names import DIRECTIONS, MODEL_METRICS, TEST_METRICS, TIMING_METRICS, on_test_split
from results.ranking import best_trial, default_metric, direction

ERROR_CHARS = 500  # an error message is cut to this in the table; the full text stays on disk
TEST_PREFIX = "test_"  # the test split's numbers: one value per chosen trial, not per epoch
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
    test: dict = field(default_factory=dict)  # test_* numbers, for the trials a sweep tested
    sampled: str | None = None  # default, random or guided (sweeps/sampling.py), where recorded


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

    @property
    def best(self) -> pd.Series:
        """The best trial's row by the sweep's objective (`rank_trials`); a clear error when no
        trial finished."""
        return best_trial(self.trials, self.metric, self.mode, history=self.history)

    def load_model(self, trial_id: str | None = None, device: str = "cpu"):
        """A trial's trained network in eval mode (the best trial's by default): the VAE, or the
        GAN's generator, as `genmodels.loop.load_model` reads it from the trial's folder (a
        fused member's exported files, else the trial's newest checkpoint)."""
        from genmodels.loop import load_model  # torch only when a model is asked for
        from results.folder import local_trial_folder, trained_model

        row = self.best if trial_id is None else self.trials.set_index("trial_id").loc[trial_id]
        folder = row["figures_dir"]
        if not isinstance(folder, str):
            raise LoadError(f"trial {row.name if trial_id else row['trial_id']} has no folder on record")
        cache = Path(tempfile.gettempdir()) / "gensweep-models"  # a sweep on cloud storage: copied
        path = trained_model(local_trial_folder(folder, cache, (".pt", ".json")))
        if path is None:
            raise LoadError(f"no trained model in {folder}: the trial saved no checkpoint")
        return load_model(path, device)


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
    columns["sampled"] = pd.Series([r.sampled for r in records], dtype="string")
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
    # The test split's numbers: NaN except for the trials the sweep chose and tested at its end.
    tested = sorted({k for r in records for k in r.test} - set(TEST_METRICS[model]))
    for name in [*TEST_METRICS[model], *tested]:
        columns[name] = pd.Series([r.test.get(name, math.nan) for r in records], dtype="float64")
    columns["epochs"] = pd.Series([int(h["epoch"].max()) if len(h) else 0 for h in per_trial],
                                  dtype="Int64")
    columns["duration_s"] = pd.Series(
        [h["epoch_seconds"].sum(min_count=1) if "epoch_seconds" in h else math.nan
         for h in per_trial], dtype="float64")
    columns["figures_dir"] = pd.Series([r.figures_dir for r in records], dtype="string")
    columns["run_id"] = pd.Series([r.run_id for r in records], dtype="string")
    columns["error"] = pd.Series([r.error for r in records], dtype="string")
    frame = pd.DataFrame(columns)
    front = ["trial_id", "status", "model", *[f"config/{k}" for k in keys], "sampled", metric,
             on_test_split(metric), f"best_{metric}", "best_epoch", "epochs", "duration_s"]
    front = [c for c in front if c is not None and c in frame]
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
