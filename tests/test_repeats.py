"""Seed repeats and the results page on a real tiny VAE sweep (run once for the module), and their
checks of bad input.

    pytest tests/test_repeats.py -q
"""

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import mlflow_runs
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from analysis import load_trials
from analysis.results_page import main as page_main
from genmodels.vae import VAEConfig
from sweeps.repeats import RepeatError, plan_repeats, repeat_best, run_plan, summarize
from sweeps.repeats import main as repeats_main

REPO = Path(__file__).resolve().parent.parent
SEEDS = 2
SWEEP = ["--num-samples", "3", "--max-concurrent", "2", "--epochs", "2", "--train-subset", "256",
         "--batch-size", "64", "--scheduler", "fifo", "--seed", "0"]


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory) -> Path:
    """A finished 3-trial VAE sweep as a user runs it (trial 1 the default configuration); its
    MLflow store (mlflow.db) is in the folder above the sweep's."""
    root = tmp_path_factory.mktemp("repeats")
    run = subprocess.run([sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir",
                          str(data_dir), "--storage-path", str(root), "--name", "tiny", *SWEEP],
                         capture_output=True, text=True, timeout=900, cwd=root)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return root / "tiny"


@pytest.fixture(scope="module")
def repeated(sweep, data_dir) -> Path:
    """`sweeps/repeats.py --top 1 --seeds 2` on the sweep; its report folder."""
    out = sweep.parent / "report"
    assert repeats_main(["--results", str(sweep), "--top", "1", "--seeds", str(SEEDS), "--out",
                         str(out), "--data-dir", str(data_dir)]) == 0
    return out


@pytest.mark.slow
def test_repeating_with_the_sweeps_seed_reproduces_its_trials(sweep, data_dir):
    """The sweep's own settings: the best and the default configuration trained again with the
    sweep's seed give exactly their trials' validation and test numbers (one thread, as a trial)."""
    plan = dataclasses.replace(plan_repeats(sweep, top=1, seeds=1), seeds=[0])
    runs = run_plan(plan, str(data_dir), num_threads=1, progress=None)
    trials = load_trials(sweep).set_index("trial_id")
    assert list(runs["configuration"]) == ["best #1", "default"] and runs["trial_id"].notna().all()
    for _, run in runs.iterrows():
        trial = trials.loc[run["trial_id"]]
        assert run["val_elbo"] == pytest.approx(trial["val_elbo"], rel=1e-5)
        assert run["test_elbo"] == pytest.approx(trial["test_elbo"], rel=1e-5)


@pytest.mark.slow
def test_repeats_of_the_best_and_the_default(repeated):
    runs = pd.read_csv(repeated / "repeats.csv")
    assert list(runs["configuration"].unique()) == ["best #1", "default"]
    # The same fresh seeds for both, after the sweep's seed 0: the comparison is paired.
    assert runs.groupby("configuration")["seed"].apply(sorted).tolist() == [[1, 2], [1, 2]]
    default = runs[runs["configuration"] == "default"].iloc[0]
    assert (default["config/dropout"], default["config/latent_dim"], default["config/lr"]) == \
        (VAEConfig().dropout, VAEConfig().latent_dim, VAEConfig().lr)
    assert runs["test_elbo"].notna().all() and (runs["epochs"] == 2).all()

    table, sentence = summarize(runs)
    means = runs.groupby("configuration")[["val_elbo", "test_elbo"]].mean()
    for _, row in table.iterrows():
        assert row["val_elbo mean"] == pytest.approx(means.loc[row["configuration"], "val_elbo"])
        assert row["test_elbo mean"] == pytest.approx(means.loc[row["configuration"], "test_elbo"])
    gain = (runs[runs["configuration"] == "best #1"].set_index("seed")["test_elbo"]
            - runs[runs["configuration"] == "default"].set_index("seed")["test_elbo"])
    said = re.search(r"(beats|does not beat) the default.*?([0-9.]+) ± ([0-9.]+) nats test_elbo "
                     rf"over {SEEDS} seeds", sentence)
    assert said, sentence
    assert float(said.group(2)) == pytest.approx(abs(gain.mean()), rel=1e-3)
    assert float(said.group(3)) == pytest.approx(gain.std() / SEEDS**0.5, rel=0.01)
    page = (repeated / "repeats.md").read_text()
    assert sentence[1:] in page and f"{means.loc['default', 'test_elbo']:.4g}" in page


@pytest.mark.slow
def test_results_page(sweep, repeated, data_dir):
    uri = f"sqlite:///{sweep.parent / 'mlflow.db'}"
    assert page_main(["--results", str(sweep), "--out", str(repeated), "--mlflow-uri", uri,
                      "--log-to-mlflow"]) == 0
    page = (repeated / "results.md").read_text()
    for image in re.findall(r"\]\(([^)]+\.png)\)", page):  # every linked image is there
        assert (repeated / image).exists(), image
    for name in ("samples_across_epochs", "real_vs_reconstructed", "final_samples"):
        for role in ("best", "default", "compare"):
            assert (repeated / f"{role}_{name}.png").exists()
    trials = load_trials(sweep)
    default = trials[(trials["config/lr"] == VAEConfig().lr)
                     & (trials["config/latent_dim"] == VAEConfig().latent_dim)]
    assert len(default) == 1 and f"**Default configuration** trial {default['trial_id'].iloc[0]}" in page
    assert "| yes |" in page  # the default marked in the table of best trials
    assert "test_elbo" in page and "## Seed repeats" in page and "over 2 seeds" in page
    assert "finished" in page and "search space (vae" in page
    parent = mlflow_runs(uri, "tiny")
    parent = parent[parent["tags.mlflow.parentRunId"].isna()].iloc[0]["run_id"]
    logged = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(parent, "results")}
    assert {"results.md", "repeats.csv", "compare_samples_across_epochs.png"} <= logged


@pytest.mark.slow
def test_results_page_regenerates_missing_figures_and_says_when_no_default(sweep, data_dir,
                                                                           tmp_path):
    """A copy of the sweep without the default trial's folder, and whose best trial lost its
    end-of-run figures (as a trial ASHA stopped early had none before): the page regenerates them from the
    trial's checkpoint, identical, and says the default was not a trial."""
    copy = tmp_path / "tiny"
    shutil.copytree(sweep, copy)
    trials = load_trials(copy)
    best = Path(trials.sort_values("val_elbo").iloc[-1]["figures_dir"])
    default = trials[trials["config/lr"] == VAEConfig().lr]
    shutil.rmtree(default["figures_dir"].iloc[0])
    for name in ("samples_across_epochs.png", "real_vs_reconstructed.png"):
        (best / name).unlink()
    out = tmp_path / "page"
    assert page_main(["--results", str(copy), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    page = (out / "results.md").read_text()
    assert "The default configuration was not among this sweep's trials" in page
    assert not (out / "default_samples_across_epochs.png").exists()
    for name in ("samples_across_epochs.png", "real_vs_reconstructed.png"):
        assert (imread(out / f"best_{name}") == imread(sweep / best.name / name)).all()


def test_bad_input_is_named_early(tmp_path, capsys):
    with pytest.raises(RepeatError, match="no sweep folder"):
        plan_repeats(tmp_path / "missing")
    with pytest.raises(RepeatError, match="seeds must be a positive integer"):
        repeat_best(tmp_path, seeds=0)
    with pytest.raises(RepeatError, match="top must be a positive integer"):
        plan_repeats(tmp_path, top=0)
    with pytest.raises(RepeatError, match="gensweep_options.json"):
        plan_repeats(tmp_path)  # a folder that is not a sweep's
    assert repeats_main(["--results", str(tmp_path / "missing")]) == 2
    assert "no sweep folder" in capsys.readouterr().err
    assert page_main(["--results", str(tmp_path / "missing")]) == 2
    assert "no sweep folder" in capsys.readouterr().err


def runs_table(metric: str, best: list[float], default: list[float]) -> pd.DataFrame:
    """Per-seed rows as repeat_best writes them (the objective's columns left out)."""
    rows = [{"configuration": label, "seed": seed, "objective": f"val_{metric}",
             "test_metric": f"test_{metric}", f"val_{metric}": value, f"test_{metric}": value}
            for label, values in (("best #1", best), ("default", default))
            for seed, value in enumerate(values, start=1)]
    return pd.DataFrame(rows)


def test_the_sentence_follows_the_metrics_direction_and_the_interval():
    # GAN: lower fcd is better; the best config lower on every seed by 10 +- 1.
    _, said = summarize(runs_table("fcd", [100.0, 110.0, 121.0], [110.0, 121.0, 130.0]))
    assert said.startswith("the best configuration beats the default by 10 ± 0.577 test_fcd over "
                           "3 seeds"), said
    # VAE: the default higher (better) on every seed.
    _, said = summarize(runs_table("elbo", [-120.0, -121.0, -122.0], [-110.0, -111.5, -112.0]))
    assert said.startswith("the best configuration does not beat the default: the default is "
                           "better by 9.833 ± 0.167 nats test_elbo"), said
    # A gain whose 95% interval spans 0.
    _, said = summarize(runs_table("elbo", [-100.0, -110.0], [-105.0, -104.0]))
    assert "does not beat the default clearly" in said and "includes 0" in said, said
