"""Analysis of a real tiny VAE sweep, run the way a user runs it (`python sweeps/vae_sweep.py`):
the MLflow records and Ray's results folder give the same table, the ranking follows the values
the trials wrote, and `analysis/rank.py` writes its report from either source.

    pytest tests/test_analysis_sweep.py -q
"""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import load_history, load_trials, rank_trials

REPO = Path(__file__).resolve().parent.parent
# With --seed 0, Optuna's first (random) suggestions put the three trials' learning rates at about
# 2e-3, 2e-2 and 2e+5 on this 22-decade range: two trials train, the third diverges at once
# (--no-default-first: the default configuration as trial 1 would take the first one's place).
SPACE = "lr: {low: 1.0e-16, high: 1.0e+6}\n"
NAME = "mix"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir) -> dict:
    work = tmp_path_factory.mktemp("analysis_sweep")
    (work / "space.yaml").write_text(SPACE)
    run = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
         "--storage-path", str(work / "ray"), "--name", NAME, "--num-samples", "3",
         "--max-concurrent", "2", "--epochs", "2", "--train-subset", "256", "--batch-size", "64",
         "--space", "space.yaml", "--seed", "0", "--no-default-first"],
        capture_output=True, text=True, timeout=900, cwd=work)
    # 3: the sweep ended but a trial diverged (sweeps/runner.py, EXIT_TRIALS_FAILED), by design here
    assert run.returncode == 3, run.stderr[-3000:]
    return {"work": work, "results": work / "ray" / NAME, "uri": f"sqlite:///{work / 'mlflow.db'}"}


def trial_files(folder: Path) -> dict:
    lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").exists() \
        else []
    status = folder / "status.json"
    return {"params": json.loads((folder / "params.json").read_text()),
            "results": [json.loads(line) for line in lines],
            "status": json.loads(status.read_text())["status"] if status.exists() else None}


@pytest.mark.slow
def test_both_sources_give_the_same_table(sweep):
    from_ray = load_trials(sweep["results"])
    from_mlflow = load_trials(experiment=NAME, tracking_uri=sweep["uri"])
    assert len(from_ray) == 3
    pd.testing.assert_frame_equal(from_ray.drop(columns="run_id"), from_mlflow.drop(columns="run_id"))
    # How each was chosen, recorded from Tune's Optuna study: no default first, the first two
    # asked before anything ended (random); the third when one or two had (TPE's start-up is 2)
    assert from_ray["sampled"].notna().all() and (from_ray["sampled"] == "random").sum() >= 2
    pd.testing.assert_frame_equal(load_history(sweep["results"]),
                                  load_history(experiment=NAME, tracking_uri=sweep["uri"]))
    client = MlflowClient(sweep["uri"])
    for run_id, trial_id in zip(from_mlflow["run_id"], from_mlflow["trial_id"]):
        assert client.get_run(run_id).data.tags["ray.trial_id"] == trial_id


@pytest.mark.slow
def test_table_matches_what_the_trials_wrote_and_ranks_diverged_last(sweep):
    trials = load_trials(sweep["results"]).set_index("trial_id")
    for _, row in trials.iterrows():
        files = trial_files(Path(row["figures_dir"]))
        assert {k: row[f"config/{k}"] for k in files["params"]} == pytest.approx(files["params"])
        if files["results"]:
            last = files["results"][-1]
            assert row["val_elbo"] == pytest.approx(last["val_elbo"])
            assert row["epochs"] == last["epoch"]
            assert row["best_val_elbo"] == max(r["val_elbo"] for r in files["results"])
        if files["status"] == "diverged":
            assert row["status"] == "diverged" and "diverged" in row["error"]
        elif files["status"] == "finished":
            assert row["status"] == "finished" and row["epochs"] == 2
        else:  # ASHA stopped it after its first epoch (which trial depends on timing)
            assert row["status"] == "stopped_early" and row["epochs"] == 1
    assert (trials["status"] == "diverged").sum() == 1

    ranked = rank_trials(trials.reset_index())
    assert ranked["status"].iloc[-1] == "diverged" and ranked["rank"].tolist() == [1, 2, 3]
    assert ranked["val_elbo"].iloc[0] > ranked["val_elbo"].iloc[1]
    lower_first = rank_trials(trials.reset_index(), mode="min")
    assert lower_first["trial_id"].tolist() == [*ranked["trial_id"][:2][::-1], ranked["trial_id"][2]]


@pytest.mark.slow
def test_cli_reports_from_mlflow_and_attaches_the_report(sweep):
    run = subprocess.run([sys.executable, str(REPO / "analysis" / "rank.py"), "--experiment", NAME,
                          "--log-to-mlflow"], capture_output=True, text=True, timeout=300,
                         cwd=sweep["work"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 trial(s) ranked last" in run.stdout and "(diverged)" in run.stdout
    report = sweep["work"] / "reports" / NAME
    assert (report / "report.html").exists() and (report / "best_sample_grids.png").exists()
    ranked = pd.read_csv(report / "ranked_trials.csv", dtype={"trial_id": str})
    assert ranked["trial_id"].tolist() == rank_trials(load_trials(sweep["results"]))["trial_id"].tolist()
    client = MlflowClient(sweep["uri"])
    experiment = client.get_experiment_by_name(NAME)
    (parent,) = client.search_runs([experiment.experiment_id],
                                   filter_string="tags.`gensweep.sweep_dir` != ''")
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/report.html", "analysis/ranked_trials.csv"} <= attached
