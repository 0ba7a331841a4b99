"""Analysis on hand-made sweeps whose right order is known: written to disk in the files Ray Tune and
the trainable write, and to a real MLflow SQLite store in the form the trial tracker writes.

    pytest tests/test_analysis.py -q
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imsave
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import LoadError, load_history, load_sweep, load_trials, rank_trials
from analysis.report import importances, write_report

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 2
# trial id -> (status, config, val_elbo per epoch). Right order by val_elbo (higher first):
# b (-90), then a and f tied at -100, then c (stopped early by the scheduler, -120); d diverged
# (its -80 at epoch 1 would be the best) and e failed before reporting: both last, by trial id.
VAE_TRIALS = {
    "a": ("finished", {"dropout": 0.1, "latent_dim": 8, "lr": 1e-3}, [-150.0, -100.0]),
    "b": ("finished", {"dropout": 0.2, "latent_dim": 16, "lr": 3e-4}, [-140.0, -90.0]),
    "c": ("stopped_early", {"dropout": 0.4, "latent_dim": 4, "lr": 1e-4}, [-120.0]),
    "d": ("diverged", {"dropout": 0.0, "latent_dim": 32, "lr": 2e-3}, [-80.0]),
    "e": ("failed", {"dropout": 0.3, "latent_dim": 2, "lr": 5e-4}, []),
    "f": ("finished", {"dropout": 0.25, "latent_dim": 64, "lr": 2e-4}, [-130.0, -100.0]),
}
VAE_ORDER = ["b", "a", "f", "c", "d", "e"]
VAE_RANKS = [1, 2, 2, 4, 5, 6]
DIVERGED_MESSAGE = "training diverged at epoch 2, step 3: loss is nan"


def epoch_metrics(elbo: float, epoch: int) -> dict:
    """A VAE epoch's metrics as the training loop reports them, tied to the ELBO."""
    return {"epoch": epoch, "train_loss": -elbo + 5.0, "val_elbo": elbo, "val_recon": elbo + 10.0,
            "val_kl": 10.0, "train_seconds": 1.5, "epoch_seconds": 2.0}


# The trials the sweep measured on the test split at its end (its best two by val_elbo): once, not
# per epoch.
TESTED = {"b": {"test_elbo": -95.0, "test_recon": -85.0, "test_kl": 10.0, "test_iwae": -92.0},
          "a": {"test_elbo": -104.0, "test_recon": -94.0, "test_kl": 10.0, "test_iwae": -101.0}}


def folder_name(trial_id: str, index: int) -> str:
    return f"train_trial_{trial_id}_{index}_x=1_2026-01-01_00-00-00"


def write_ray_folder(root: Path, trials: dict = VAE_TRIALS) -> Path:
    """The sweep folder as Ray Tune and trainables/trainable.py leave it."""
    sweep = root / "hand"
    sweep.mkdir(parents=True)
    (sweep / "gensweep_options.json").write_text(json.dumps(
        {"epochs": EPOCHS, "metric": "val_elbo", "name": "hand", "mlflow_uri": None}))
    for index, (trial_id, (status, config, elbos)) in enumerate(trials.items()):
        folder = sweep / folder_name(trial_id, index)
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(config))
        lines = [json.dumps({**epoch_metrics(v, e), "training_iteration": e, "trial_id": trial_id,
                             "time_total_s": 3.0 * e, "config": config, "done": False})
                 for e, v in enumerate(elbos, 1)]
        if lines:
            (folder / "result.json").write_text("\n".join(lines) + "\n")
            grid = np.full((28, 28), len(elbos) / EPOCHS)
            (folder / "samples").mkdir()
            imsave(folder / "samples" / f"epoch_{len(elbos):03d}.png", grid, cmap="gray")
        if status == "finished":
            (folder / "status.json").write_text(json.dumps({"status": "finished"}))
        if trial_id in TESTED and trials is VAE_TRIALS:
            (folder / "test_metrics.json").write_text(json.dumps({"epoch": EPOCHS, **TESTED[trial_id]}))
        if status == "diverged":
            (folder / "status.json").write_text(json.dumps(
                {"status": "diverged", "epoch": 2, "message": DIVERGED_MESSAGE}))
            (folder / "error.txt").write_text(f"Failure # 1\nTrainingDiverged: {DIVERGED_MESSAGE}\n")
        if status == "failed":
            (folder / "error.txt").write_text("Failure # 1\nRuntimeError: CUDA out of memory\n")
    return sweep


def write_mlflow(uri: str, sweep_dir: Path, trials: dict = VAE_TRIALS) -> str:
    """The same sweep as MLflow records: a parent run and one child per trial, as
    sweeps/mlflow_sweep.py and trainables/mlflow_trial.py write them. Returns the parent run id."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("hand")
    parent = client.create_run(experiment, tags={"gensweep.sweep_dir": str(sweep_dir.resolve()),
                                                 "gensweep.model": "vae"}).info.run_id
    client.log_batch(parent, params=[Param("metric", "val_elbo"), Param("epochs", str(EPOCHS))])
    for index, (trial_id, (status, config, elbos)) in enumerate(trials.items()):
        tags = {"mlflow.parentRunId": parent, "ray.trial_id": trial_id, "gensweep.model": "vae",
                "ray.trial_dir": f"/tmp/ray/session_x/artifacts/{folder_name(trial_id, index)}"}
        run = client.create_run(experiment, tags=tags).info.run_id
        params = {**config, "hidden_dim": 512, "binarize": False, "train.epochs": EPOCHS}
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
        for epoch, elbo in enumerate(elbos, 1):
            client.log_batch(run, metrics=[Metric(k, float(v), 0, epoch)
                                           for k, v in epoch_metrics(elbo, epoch).items()
                                           if k != "epoch"])
        if trial_id in TESTED and trials is VAE_TRIALS:
            client.log_batch(run, metrics=[Metric(k, v, 0, EPOCHS) for k, v in TESTED[trial_id].items()])
        client.set_tag(run, "gensweep.status", status)
        if status in ("diverged", "failed"):
            reason = DIVERGED_MESSAGE if status == "diverged" else "RuntimeError: CUDA out of memory"
            client.set_tag(run, "gensweep.failure_reason", reason)
        client.set_terminated(run, "FAILED" if status in ("diverged", "failed") else "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def ray_folder(tmp_path_factory) -> Path:
    """One hand-made sweep shared by the module's tests (they only read it)."""
    return write_ray_folder(tmp_path_factory.mktemp("hand") / "ray")


@pytest.fixture(scope="module")
def mlflow_store(ray_folder) -> tuple[str, str]:
    """The same sweep in an MLflow store, written once: a new SQLite store costs seconds."""
    uri = f"sqlite:///{ray_folder.parent / 'mlflow.db'}"
    return uri, write_mlflow(uri, ray_folder)


def test_vae_trials_rank_by_elbo_higher_first_with_failed_last(ray_folder):
    ranked = rank_trials(load_trials(ray_folder))
    assert list(ranked["trial_id"]) == VAE_ORDER
    assert list(ranked["rank"]) == VAE_RANKS
    assert list(ranked["status"]) == ["finished", "finished", "finished", "stopped_early",
                                      "diverged", "failed"]
    diverged = ranked.set_index("trial_id").loc["d"]
    assert diverged["val_elbo"] == -80.0 and DIVERGED_MESSAGE in diverged["error"]  # shown, not dropped


def test_lower_is_better_reverses_the_usable_trials_only(ray_folder):
    ranked = rank_trials(load_trials(ray_folder), metric="train_loss")  # -elbo + 5: lower first
    assert list(ranked["trial_id"]) == VAE_ORDER
    flipped = rank_trials(load_trials(ray_folder), metric="val_elbo", mode="min")
    assert list(flipped["trial_id"]) == ["c", "a", "f", "b", "d", "e"]
    assert list(flipped["rank"]) == [1, 2, 2, 4, 5, 6]


def gan_table() -> pd.DataFrame:
    return pd.DataFrame({
        "trial_id": pd.Series(["g1", "g2", "g3", "g4", "g5"], dtype="string"),
        "status": pd.Series(["finished", "failed", "finished", "finished", "stopped_early"],
                            dtype="string"),
        "model": pd.Series(["gan"] * 5, dtype="string"),
        "val_fcd": [40.0, 1.0, 12.5, np.nan, 30.0],
        "val_inception_score": [3.0, 9.9, 6.5, np.nan, 8.0],
    })


def test_gan_trials_rank_by_fcd_lower_first_and_by_inception_score_on_request():
    by_fcd = rank_trials(gan_table())
    # g4 finished without a score: after every scored trial, before the failed one (whose
    # fcd of 1.0 must not put it first).
    assert list(by_fcd["trial_id"]) == ["g3", "g5", "g1", "g4", "g2"]
    by_is = rank_trials(gan_table(), metric="val_inception_score")
    assert list(by_is["trial_id"]) == ["g5", "g3", "g1", "g4", "g2"]
    assert list(by_is["rank"]) == [1, 2, 3, 4, 5]


def test_a_trial_stopped_early_outranks_a_longer_one_only_if_it_was_better_when_stopped():
    """ASHA stopped s1 and s2 at epoch 2; f1 and f2 ran 4 epochs and their FCD rose later (a GAN's
    scores can worsen). By the last value s1 and s2 would rank first; s1 was worse than f1 at
    epoch 2 (ASHA stopped it for that), so f1 ranks above it; s2 was better than both then."""
    trials = pd.DataFrame({
        "trial_id": ["f1", "f2", "s1", "s2"], "model": "gan",
        "status": ["finished", "finished", "stopped_early", "stopped_early"],
        "epochs": [4, 4, 2, 2], "val_fcd": [30.0, 40.0, 25.0, 20.0]})
    curves = {"f1": [50.0, 22.0, 26.0, 30.0], "f2": [55.0, 45.0, 42.0, 40.0],
              "s1": [60.0, 25.0], "s2": [50.0, 20.0]}
    history = pd.DataFrame([{"trial_id": t, "epoch": e, "metric": "val_fcd", "value": v}
                            for t, values in curves.items() for e, v in enumerate(values, start=1)])
    ranked = rank_trials(trials, history=history)
    assert list(ranked["trial_id"]) == ["s2", "f1", "s1", "f2"]
    assert list(ranked["rank"]) == [1, 2, 3, 4]
    # without the histories (or by the best value) the last values alone decide
    assert list(rank_trials(trials)["trial_id"]) == ["s2", "s1", "f1", "f2"]


def test_order_is_stable_whatever_the_input_order(ray_folder):
    trials = load_trials(ray_folder)
    for seed in range(3):
        shuffled = trials.sample(frac=1, random_state=seed)
        assert list(rank_trials(shuffled)["trial_id"]) == VAE_ORDER


def test_unknown_metric_and_direction_are_clear_errors(ray_folder):
    trials = load_trials(ray_folder)
    with pytest.raises(KeyError, match="no column 'val_fcd'"):
        rank_trials(trials, metric="val_fcd")
    with pytest.raises(ValueError, match="pass mode="):
        rank_trials(trials, metric="val_kl")
    assert list(rank_trials(trials, metric="val_kl", mode="min")["trial_id"])[-2:] == ["d", "e"]


EXPECTED_DTYPES = {
    "trial_id": "string", "status": "string", "model": "string", "config/dropout": "float64",
    "config/latent_dim": "Int64", "config/lr": "float64", "sampled": "string", "val_elbo": "float64",
    "test_elbo": "float64", "best_val_elbo": "float64", "best_epoch": "Int64", "epochs": "Int64",
    "duration_s": "float64", "val_recon": "float64", "val_kl": "float64", "train_loss": "float64",
    "train_seconds": "float64", "epoch_seconds": "float64", "best_val_recon": "float64",
    "best_train_loss": "float64", "test_recon": "float64", "test_kl": "float64",
    "test_iwae": "float64", "figures_dir": "string", "run_id": "string", "error": "string",
}


def test_columns_and_dtypes_are_stable(ray_folder, tmp_path):
    trials = load_trials(ray_folder)
    assert {c: str(t) for c, t in trials.dtypes.items()} == EXPECTED_DTYPES
    row = trials.set_index("trial_id").loc["a"]
    assert row["best_epoch"] == 2 and row["epochs"] == 2 and row["duration_s"] == 4.0
    assert Path(row["figures_dir"]) == next(ray_folder.glob("train_trial_a_*")).resolve()
    # A sweep where every trial failed before reporting has the same columns and dtypes.
    failed = {"x": ("failed", {"dropout": 0.1, "latent_dim": 8, "lr": 1e-3}, [])}
    none_reported = load_trials(write_ray_folder(tmp_path / "failed", failed))
    assert {c: str(t) for c, t in none_reported.dtypes.items()} == EXPECTED_DTYPES
    assert none_reported["status"].tolist() == ["failed"]


def test_test_numbers_sit_beside_the_validation_objective_for_the_tested_trials(ray_folder):
    ranked = rank_trials(load_trials(ray_folder))
    assert list(ranked.columns[:10]) == ["rank", "trial_id", "status", "model", "config/dropout",
                                         "config/latent_dim", "config/lr", "sampled", "val_elbo",
                                         "test_elbo"]
    by_id = ranked.set_index("trial_id")
    assert by_id.loc["b", "test_elbo"] == -95.0 and by_id.loc["a", "test_iwae"] == -101.0
    assert by_id.drop(index=list(TESTED))[["test_elbo", "test_iwae"]].isna().all().all()
    # Never an epoch of the history: the test split is measured once.
    assert not load_history(ray_folder)["metric"].str.startswith("test_").any()


def test_history_is_long_form(ray_folder):
    history = load_history(ray_folder)
    assert list(history.columns) == ["trial_id", "epoch", "metric", "value"]
    elbo = history[(history["trial_id"] == "b") & (history["metric"] == "val_elbo")]
    assert elbo["epoch"].tolist() == [1, 2] and elbo["value"].tolist() == [-140.0, -90.0]
    assert set(history["trial_id"]) == {"a", "b", "c", "d", "f"}  # e reported nothing


def test_mlflow_and_ray_folder_give_the_same_table(ray_folder, mlflow_store):
    uri, parent = mlflow_store
    from_ray = load_trials(ray_folder)
    from_mlflow = load_trials(experiment="hand", tracking_uri=uri)
    assert from_mlflow["run_id"].notna().all() and from_ray["run_id"].isna().all()
    pd.testing.assert_frame_equal(from_ray.drop(columns=["run_id", "error"]),
                                  from_mlflow.drop(columns=["run_id", "error"]))
    pd.testing.assert_frame_equal(load_history(ray_folder),
                                  load_history(experiment="hand", tracking_uri=uri))
    assert list(rank_trials(from_mlflow)["trial_id"]) == VAE_ORDER


def test_importances_need_finished_trials_and_say_so(ray_folder):
    trials = rank_trials(load_trials(ray_folder))
    table, messages = importances(trials, "val_elbo", "max", min_trials=2)  # the evaluators run
    assert set(table.index) == {"dropout", "latent_dim", "lr"} and table.shape[1] >= 1
    assert np.allclose(table.sum(), 1.0)
    few = trials[trials["trial_id"].isin(["b", "d", "e"])]
    table, messages = importances(few, "val_elbo", "max", min_trials=2)
    assert table.shape[1] == 0 and "at least 2 finished trials" in messages[0]


def test_report_writes_every_file_from_mlflow_without_the_trial_folders(tmp_path, mlflow_store):
    """Trial folders on another machine: the sample grids come from MLflow, the rest is drawn."""
    uri, _ = mlflow_store
    sweep = load_sweep(experiment="hand", tracking_uri=uri)
    sweep.trials["figures_dir"] = "/nonexistent"
    files = write_report(sweep, tmp_path / "report")
    assert all(p.exists() and p.stat().st_size > 0 for p in files.values())
    page = files["page"].read_text()
    for name in ("metric_vs_hyperparameters.png", "learning_curves.png", "parallel_coordinates.png",
                 "importances.png", "best_sample_grids.png", "ranked_trials.csv"):
        assert name in page


def rank_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "analysis" / "rank.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


REPORT_FILES = {"ranked_trials.csv", "metric_vs_hyperparameters.png", "learning_curves.png",
                "parallel_coordinates.png", "importances.png", "importances.csv",
                "best_sample_grids.png", "report.html"}


@pytest.mark.slow
def test_cli_prints_the_top_trials_and_writes_every_file(ray_folder, mlflow_store, tmp_path):
    uri, parent = mlflow_store
    result = rank_cli("--results", str(ray_folder), "--top", "3", "--log-to-mlflow",
                      "--mlflow-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(ln for ln in lines if ln.lstrip().startswith("rank"))) + 1:][:3]
    assert [ln.split()[1] for ln in table] == ["b", "a", "f"]
    assert "2 trial(s) ranked last: d (diverged), e (failed)" in result.stdout
    report = tmp_path / "reports" / "hand"
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    csv = pd.read_csv(report / "ranked_trials.csv", dtype={"trial_id": str})
    assert csv["trial_id"].tolist() == VAE_ORDER and csv["rank"].tolist() == VAE_RANKS
    attached = {a.path for a in MlflowClient(uri).list_artifacts(parent, "analysis")}
    assert {f"analysis/{name}" for name in REPORT_FILES} == attached

    from_mlflow = rank_cli("--experiment", "hand", "--mlflow-uri", uri, "--out", "m", cwd=tmp_path)
    assert from_mlflow.returncode == 0, from_mlflow.stderr[-3000:]
    assert {p.name for p in (tmp_path / "m").iterdir()} == REPORT_FILES


@pytest.mark.parametrize("args, message", [
    (["--results", "nowhere"], "no sweep folder"),
    (["--experiment", "hand", "--mlflow-uri", "sqlite:///missing.db"], "no MLflow store"),
    (["--results", "RAY", "--metric", "val_fcd"], "no column 'val_fcd'"),
])
def test_cli_bad_input_is_a_clear_error(args, message, ray_folder, tmp_path, capsys, monkeypatch):
    from analysis.rank import main

    monkeypatch.chdir(tmp_path)
    args = [str(ray_folder) if a == "RAY" else a for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_load_needs_exactly_one_source(ray_folder):
    with pytest.raises(ValueError, match="exactly one source"):
        load_trials()
    with pytest.raises(LoadError, match="not its parent"):
        load_trials(ray_folder.parent)
