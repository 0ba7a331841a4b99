"""Faults a long sweep meets, each injected for real: a trial's worker SIGKILLed mid-run, the
driver stopped by SIGTERM and resumed (with a second --resume refused meanwhile), and checkpoints
that are truncated or crafted to run code.

    pytest tests/test_faults.py -q
"""

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import mlflow_runs
from mlflow.tracking import MlflowClient

from genmodels.data import load_dataset
from genmodels.training import TrainConfig, Trainer, TrainingDiverged
from genmodels.vae import VAEConfig
from sweeps.runner import EXIT_BAD_INPUT, EXIT_OK, EXIT_TERMINATED
from trainables.trainable import CheckpointError, resume_from

REPO = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 300  # for a tiny trial to reach an epoch on a busy 2-core machine
POLL_SECONDS = 0.2


def sweep_command(data_dir: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--data-dir", str(data_dir),
            "--storage-path", str(tmp_path / "ray"), "--name", name, "--scheduler", "fifo",
            "--batch-size", "64", *extra]


def start(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)


def epochs_reported(trial: Path) -> list[int]:
    path = trial / "result.json"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def trial_dirs(experiment: Path) -> list[Path]:
    if not experiment.exists():
        return []
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("train_trial"))


def wait_for(condition, what: str, process: subprocess.Popen, log: Path):
    deadline = time.time() + WAIT_SECONDS
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the sweep ended (code {process.returncode}) before {what}:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(POLL_SECONDS)
    process.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process under `pid` (this test's sweep only)."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True,
                           text=True, check=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in table.splitlines():
        child, parent, *args = line.split(None, 2)
        children.setdefault(int(parent), []).append((int(child), " ".join(args)))
    found, todo = {}, [pid]
    while todo:
        for child, args in children.get(todo.pop(), []):
            found[child] = args
            todo.append(child)
    return found


def metric_steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def image_steps(client: MlflowClient, run_id: str) -> list[int]:
    from trainables.tracking import image_step

    steps = (image_step(a.path) for a in client.list_artifacts(run_id, "images"))
    return sorted(s for s in steps if s is not None)


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint_and_loses_nothing(data_dir, tmp_path):
    epochs = 4
    log = tmp_path / "sweep.log"
    process = start(sweep_command(data_dir, tmp_path, "killed", "--num-samples", "1",
                                  "--epochs", str(epochs), "--train-subset", "1024"),
                    tmp_path, log)
    experiment = tmp_path / "ray" / "killed"
    wait_for(lambda: any(epochs_reported(t) for t in trial_dirs(experiment)),
             "the first epoch's checkpoint", process, log)
    workers = wait_for(lambda: [p for p, args in descendants(process.pid).items()
                                if args.startswith("ray::ImplicitFunc")],
                       "the trial's worker process", process, log)
    for pid in workers:
        subprocess.run(["kill", "-KILL", str(pid)], check=True)  # mid-run, without warning
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_OK, log.read_text()[-3000:]

    (trial,) = trial_dirs(experiment)  # one trial: retried, not replaced (Optuna saw one)
    assert "Failure # 1" in (trial / "error.txt").read_text()  # the kill did hit it
    reported = epochs_reported(trial)
    assert sorted(set(reported)) == list(range(1, epochs + 1)) and reported[0] == 1
    assert reported.count(1) == 1  # resumed from its checkpoint: epoch 1 not trained again
    (searcher,) = experiment.glob("searcher-state-*.pkl")
    study = pickle.loads(searcher.read_bytes())["_ot_study"]
    assert len(study.trials) == 1 and study.trials[0].state.name == "COMPLETE"

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "killed")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 1  # the retry continued the trial's run
    (run_id,) = children.run_id
    client = MlflowClient(uri)
    for metric in ("test_elbo", "train_loss", "epoch_seconds"):
        assert metric_steps(client, run_id, metric) == list(range(1, epochs + 1)), metric
    assert image_steps(client, run_id) == list(range(1, epochs + 1))
    assert set(runs["status"]) == {"FINISHED"}
    assert children["tags.gensweep.status"].iloc[0] == "finished"


@pytest.mark.slow
def test_sigterm_then_resume_keeps_finished_trials_and_refuses_a_second_driver(data_dir,
                                                                                tmp_path):
    trials, epochs = 3, 2
    log = tmp_path / "sweep.log"
    command = sweep_command(data_dir, tmp_path, "term", "--num-samples", str(trials),
                            "--max-concurrent", "1", "--epochs", str(epochs),
                            "--train-subset", "512")
    process = start(command, tmp_path, log)
    experiment = tmp_path / "ray" / "term"
    wait_for(lambda: [t for t in trial_dirs(experiment) if len(epochs_reported(t)) == epochs],
             "a finished trial", process, log)
    process.send_signal(signal.SIGTERM)  # what `timeout` or a cluster scheduler sends
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_TERMINATED, log.read_text()[-3000:]
    finished = {t.name: epochs_reported(t) for t in trial_dirs(experiment)
                if len(epochs_reported(t)) == epochs}
    assert 1 <= len(finished) < trials
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "term")
    assert "RUNNING" not in set(runs["status"])  # nothing left in a false state
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert list(parent["status"]) == ["KILLED"]
    killed = runs[runs["status"] == "KILLED"]
    assert set(killed["tags.gensweep.status"].dropna()) <= {"unfinished"}

    resume = sweep_command(data_dir, tmp_path, "term", "--resume")
    log2 = tmp_path / "resume.log"
    first = start(resume, tmp_path, log2)
    # Wait until the first --resume holds the sweep (its Ray is up and trials restart).
    wait_for(lambda: "MLflow: experiment" in log2.read_text(), "the resumed sweep to start",
             first, log2)
    second = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert second.returncode == EXIT_BAD_INPUT
    assert "is running in another process" in second.stderr
    assert first.wait(timeout=WAIT_SECONDS) == EXIT_OK, log2.read_text()[-3000:]

    all_trials = trial_dirs(experiment)
    assert len(all_trials) == trials  # the requested number, none twice
    for trial in all_trials:
        assert epochs_reported(trial) == list(range(1, epochs + 1)), trial.name
    for name, reported in finished.items():
        assert epochs_reported(experiment / name) == reported  # kept, not rerun
    runs = mlflow_runs(uri, "term")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(runs) - len(children) == 1 and len(children) == trials
    assert set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(uri)
    for run_id in children.run_id:
        assert metric_steps(client, run_id, "test_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))

    # Resume is about this sweep: a changed option of the sweep's own is refused, naming both.
    changed = subprocess.run([*resume, "--epochs", "5"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert changed.returncode == EXIT_BAD_INPUT
    assert "--epochs 5 differs from the sweep's 2" in changed.stderr


@pytest.fixture(scope="module")
def trainer(data_dir) -> Trainer:
    data = load_dataset("mnist", data_dir)
    return Trainer.create("vae", VAEConfig(), TrainConfig(epochs=1, train_subset=64, batch_size=32,
                                                          iwae_samples=0), data)


def test_truncated_checkpoint_is_a_clear_trial_error(trainer, tmp_path):
    path = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checkpoint.pt is unreadable or unsafe"):
        resume_from(trainer, path)


class _RunsCode:
    """Unpickling this calls open(marker, "w"): code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_checkpoint_crafted_to_run_code_is_refused(trainer, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    state = trainer.state_dict()
    state["history"] = [_RunsCode(marker)]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="unreadable or unsafe"):
        resume_from(trainer, path)
    assert not marker.exists()  # weights_only=True refused it before anything ran
    torch.load(path, weights_only=False)  # the file is a real exploit: unguarded, it runs
    assert marker.exists()


def test_diverged_error_survives_pickling():
    """Ray pickles a trial's error to the driver: it must come back as itself."""
    err = pickle.loads(pickle.dumps(TrainingDiverged(3, 50, {"loss": float("nan")})))
    assert isinstance(err, TrainingDiverged) and (err.epoch, err.step) == (3, 50)
    assert "training diverged at epoch 3, step 50" in str(err)
