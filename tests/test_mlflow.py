"""MLflow records of real sweeps: the local SQLite store with four trials writing at once, a real
`mlflow server` on 127.0.0.1, an unreachable server, and a failing trial.

    pytest tests/test_mlflow.py -q
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
from conftest import mlflow_runs
from mlflow.tracking import MlflowClient

from genmodels.loop import load_model
from genmodels.vae import VAE
from sweeps.runner import run

REPO = Path(__file__).resolve().parent.parent
SERVER_START_SECONDS = 90


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd)


def tiny(data_dir: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--storage-path", str(tmp_path / "ray"), "--name", name,
            "--train-subset", "256", "--batch-size", "64", "--epochs", "2", "--scheduler", "fifo",
            *extra]


def check_sweep_records(uri: str, name: str, trials: int, epochs: int = 2) -> None:
    client = MlflowClient(uri)
    runs = mlflow_runs(uri, name)
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == trials
    parent_id = parents.run_id.iloc[0]
    experiment = client.get_experiment(runs.experiment_id.iloc[0])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    # The trials view the sweep's closing lines link to: every trial listed, ranked by the objective.
    view = json.loads(experiment.tags["mlflow.sharedViewState.gensweep"])
    assert view["orderByKey"] == "metrics.`val_elbo`" and view["orderByAsc"] is False
    assert {"metrics.`val_elbo`", "metrics.`test_elbo`", "params.`lr`",
            "tags.`gensweep.sampled`"} <= set(view["selectedColumns"])
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert set(runs["status"]) == {"FINISHED"}
    assert {"leaderboard.csv", "best_config.json", "search_space.txt"} <= {
        a.path for a in client.list_artifacts(parent_id)}
    # The best trial's network as plain files that load_model rebuilds (no pickle).
    best = load_model(client.download_artifacts(parent_id, "best_model"))
    assert isinstance(best, VAE) and not best.training
    for run_id in children.run_id:
        run_ = client.get_run(run_id)
        assert {"dropout", "latent_dim", "lr", "hidden_dim", "train.epochs"} <= set(run_.data.params)
        assert {"ray.trial_id", "ray.trial_dir", "ray.node_id"} <= set(run_.data.tags)
        # how its configuration was chosen, tagged at the sweep's end (sweeps/sampling.py)
        assert run_.data.tags["gensweep.sampled"] in ("default", "random", "guided")
        for metric in ("val_elbo", "train_loss", "val_kl"):
            assert [m.step for m in client.get_metric_history(run_id, metric)] == list(
                range(1, epochs + 1))
        images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
        assert len(images) == epochs  # one sample grid per epoch, stepped
        assert {"figures/real_vs_reconstructed.png", "figures/samples_across_epochs.png"} <= {
            a.path for a in client.list_artifacts(run_id, "figures")}


@pytest.mark.slow
def test_local_store_keeps_everything_from_four_concurrent_trials(data_dir, tmp_path):
    result = sweep(*tiny(data_dir, tmp_path, "local4", "--num-samples", "4", "--max-concurrent",
                         "4", "--cpus-per-trial", "0.5"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlruns").is_dir()
    check_sweep_records(f"sqlite:///{tmp_path / 'mlflow.db'}", "local4", trials=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real tracking server with proxied artifacts, started as a user would."""
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(server_dir / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + SERVER_START_SECONDS
    while time.time() < deadline:
        try:
            with urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start")
    yield uri, server_dir
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_remote_server_receives_every_record(mlflow_server, data_dir, tmp_path):
    uri, server_dir = mlflow_server
    work = tmp_path / "work"
    work.mkdir()
    result = sweep(*tiny(data_dir, tmp_path, "remote", "--num-samples", "2", "--max-concurrent",
                         "2", "--mlflow-uri", uri), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    check_sweep_records(uri, "remote", trials=2)
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()
    assert list((server_dir / "artifacts").rglob("*.png"))  # artifacts went to the server


def test_unreachable_server_fails_fast(data_dir, tmp_path, capsys):
    start = time.time()
    code = run("vae", ["--data-dir", str(data_dir), "--mlflow-uri",
                       f"http://127.0.0.1:{free_port()}", "--storage-path", str(tmp_path)])
    assert code == 2 and "does not answer" in capsys.readouterr().err
    assert time.time() - start < 15
    assert not (tmp_path / "vae-sweep").exists()
