"""The test split, once, for the trials a sweep chose: the last step of a sweep.

Every number a sweep chooses by (the objective Tune, ASHA and Optuna see, the ranking) comes from the
validation split. When the trials have ended the driver ranks every configuration by that objective
(`analysis.rank_trials` on the sweep's folder, the same table `analysis/rank.py` prints) and
measures the best `--test-top` of them on the test split, once (`genmodels.loop.
evaluate_on_test_split` on each trial's final model):

- each tested trial gets `test_metrics.json` in its folder and the `test_*` metrics on its MLflow run,
- the parent run gets the ranked table as `leaderboard.csv` (validation and test numbers side by
  side) and the best trial's test numbers as `best_test_*`,
- the console prints the tested trials.

The test number is what a paper would report for the chosen configuration; it never feeds back into
any choice.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from genmodels.device import resolve_device
from genmodels.files import write_json
from genmodels.loop import TrainConfig, evaluate_on_test_split
from genmodels.names import TEST_METRICS_FILE, USABLE
from results.folder import read_ray_folder, trained_model
from results.ranking import rank_trials
from results.table import build_sweep
from sweeps.storage import SweepFolder

DEFAULT_TEST_TOP = 3  # the best few by the validation objective; each costs seconds on a CPU


def ranked_trials(experiment: Path, model: str, metric: str, mode: str) -> pd.DataFrame:
    records, _ = read_ray_folder(experiment)
    sweep = build_sweep(records, experiment.name, model, metric, mode, {"results": str(experiment)})
    return rank_trials(sweep.trials, metric, mode, history=sweep.history)


def measured_at(folder: Path) -> int | None:
    """The epoch at which the trial in `folder` was measured on the test split, if it was."""
    try:
        return json.loads((folder / TEST_METRICS_FILE).read_text()).get("epoch")
    except (OSError, ValueError):
        return None


def measure_chosen(experiment: Path, model: str, metric: str, mode: str, top: int, data,
                   settings: dict, scorer=None, fetch=None, store=None) -> pd.DataFrame:
    """Rank the sweep's trials by `metric` and measure the best `top` usable ones on the test
    split; returns the ranked table with their `test_*` columns filled in (and their
    test_metrics.json written). When `experiment` is a local copy of a sweep on cloud storage,
    `fetch(folder)` brings a chosen trial's model into its folder first, and `store(file)` sends
    its test_metrics.json back."""
    ranked = ranked_trials(experiment, model, metric, mode)
    chosen = ranked[ranked["status"].isin(USABLE) & ranked[metric].notna()].head(top)
    device = resolve_device("auto")
    train_cfg = TrainConfig(**settings)
    for index, row in chosen.iterrows():
        folder = Path(row["figures_dir"])
        if measured_at(folder) == int(row["epochs"]):
            # Already measured at this trial's last epoch (a finished sweep run again with
            # --resume): once is the rule, and its numbers are in `ranked` from that file.
            continue
        if fetch is not None:
            fetch(folder)
        path = trained_model(folder)
        if path is None:  # e.g. a trial whose checkpoint was deleted: say so, test the others
            print(f"test split: no trained model in {folder}; {row['trial_id']} not tested")
            continue
        metrics = evaluate_on_test_split(path, data, train_cfg, scorer, device)
        write_json(folder / TEST_METRICS_FILE, {"epoch": int(row["epochs"]), **metrics})
        if store is not None:
            store(folder / TEST_METRICS_FILE)
        for name, value in metrics.items():
            ranked.loc[index, name] = value
    return ranked


def measure_chosen_in(folder: SweepFolder, model: str, metric: str, mode: str, top: int, data,
                      settings: dict, scorer=None) -> pd.DataFrame:
    """measure_chosen on the sweep's folder wherever it is. On cloud storage it works on a local
    copy of the sweep's small files, downloads only the chosen trials' models, and uploads each
    tested trial's test_metrics.json beside its results; the table's `figures_dir` are the URIs."""
    if folder.local:
        return measure_chosen(Path(folder.path), model, metric, mode, top, data, settings, scorer)
    with tempfile.TemporaryDirectory(prefix="gensweep-test-split-") as tmp:
        mirror = folder.download_records(Path(tmp))
        ranked = measure_chosen(mirror, model, metric, mode, top, data, settings, scorer,
                                fetch=lambda trial: folder.fetch_final_model(mirror, trial),
                                store=lambda file: folder.upload(
                                    file, file.relative_to(mirror).as_posix()))
        ranked["figures_dir"] = ranked["figures_dir"].str.replace(str(mirror), folder.location,
                                                                  regex=False)
    return ranked


def chosen_table(ranked: pd.DataFrame, metric: str, space: dict) -> str:
    tested = [c for c in ranked if c.startswith("test_") and ranked[c].notna().any()]
    rows = ranked[ranked[tested].notna().any(axis=1)] if tested else ranked.iloc[:0]
    if rows.empty:
        return "no trial was tested"
    columns = ["rank", "trial_id", *[f"config/{k}" for k in space if f"config/{k}" in rows],
               metric, *tested]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        return rows[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def scorer_for_test(scorer_cache: dict | None):
    """The GAN's scorer against the test split (the cache's reference), on the driver's device."""
    if scorer_cache is None:
        return None
    from genmodels.classifier import scorer_from_cache

    return scorer_from_cache(scorer_cache, resolve_device("auto"))


def log_test_numbers(tracking, ranked: pd.DataFrame) -> None:
    """Each tested trial's numbers on its MLflow run, at its last epoch."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trainables.mlflow_trial import find_trial_run, not_yet_logged, retry

    client = MlflowClient(tracking.uri)
    tested = [c for c in ranked if c.startswith("test_")]
    now = int(pd.Timestamp.now().timestamp() * 1000)
    for _, row in ranked[ranked[tested].notna().any(axis=1)].iterrows():
        run_id = find_trial_run(client, tracking.experiment_id, str(row["trial_id"]),
                                tracking.parent_run_id)
        if run_id is None:
            continue
        step = int(row["epochs"])
        values = not_yet_logged(client, run_id, {name: float(row[name]) for name in tested
                                                 if pd.notna(row[name])})
        metrics = [Metric(name, value, now, step) for name, value in values.items()]
        if metrics:
            retry(lambda r=run_id, m=metrics: client.log_batch(r, metrics=m))
