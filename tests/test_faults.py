"""Faults a long sweep meets, each injected for real: a trial's worker SIGKILLed mid-run, the
driver stopped by SIGTERM or SIGKILL and resumed (with a second --resume refused meanwhile), the
tracking server away for 30 s mid-sweep, and checkpoints that are truncated or crafted to run code.

    pytest tests/test_faults.py -q
"""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
import torch
from conftest import mlflow_runs
from mlflow.tracking import MlflowClient

from genmodels.data import load_dataset
from genmodels.files import read_status
from genmodels.training import TrainConfig, Trainer, TrainingDiverged
from genmodels.vae import VAEConfig
from sweeps.runner import EXIT_BAD_INPUT, EXIT_OK, EXIT_TERMINATED
from trainables.trainable import CheckpointError, resume_from

REPO = Path(__file__).resolve().parent.parent
REPORT_ENV = "GENSWEEP_FAULT_REPORT"  # bench/faults.py: a folder for one JSON line per scenario
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


def record_fault(scenario: str, injected: str, outcome: str, experiment: Path, uri: str,
                 trials: int, epochs: int) -> None:
    """What the sweep kept, counted from its own folder and MLflow, for bench/faults.py's table
    (written only when $GENSWEEP_FAULT_REPORT names a folder)."""
    folder = os.environ.get(REPORT_ENV)
    if not folder:
        return
    dirs = trial_dirs(experiment)
    finished = sum(read_status(t).get("status") == "finished" for t in dirs)
    runs = mlflow_runs(uri, experiment.name)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    client = MlflowClient(uri)
    steps = [metric_steps(client, r, "val_elbo") for r in children.run_id]
    stalls = [json.loads(line)["time_this_iter_s"] for t in dirs
              for line in (t / "result.json").read_text().splitlines()]
    row = {"scenario": scenario, "injected": injected, "outcome": outcome,
           "trials_requested": trials, "trials_finished": finished,
           "trials_lost": trials - finished, "epochs_expected": trials * epochs,
           "epochs_found": sum(len(set(s)) for s in steps),
           "runs_running": int((runs["status"] == "RUNNING").sum()),
           "duplicates": sum(len(s) - len(set(s)) for s in steps)
           + len(children) - children["tags.ray.trial_id"].nunique(),
           "longest_epoch_s": round(max(stalls, default=0.0), 1)}
    with (Path(folder) / "faults.jsonl").open("a") as out:
        out.write(json.dumps(row) + "\n")


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
    for metric in ("val_elbo", "train_loss", "epoch_seconds"):
        assert metric_steps(client, run_id, metric) == list(range(1, epochs + 1)), metric
    assert image_steps(client, run_id) == list(range(1, epochs + 1))
    assert set(runs["status"]) == {"FINISHED"}
    assert children["tags.gensweep.status"].iloc[0] == "finished"
    record_fault("killed worker", "SIGKILL to the trial's worker after epoch 1",
                 "retried from its checkpoint, exit 0", experiment, uri, 1, epochs)


def stop_leftovers(pids: dict[int, str]) -> None:
    """Ray's processes die with a SIGKILLed driver (fate sharing); any that linger are this
    test's own and are killed, by pid."""
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(POLL_SECONDS)
    for pid in pids:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_driver_then_resume_keeps_finished_trials_and_refuses_a_second_driver(
        stop_signal, data_dir, tmp_path):
    trials, epochs = 3, 2
    log = tmp_path / "sweep.log"
    command = sweep_command(data_dir, tmp_path, "term", "--num-samples", str(trials),
                            "--max-concurrent", "1", "--epochs", str(epochs),
                            "--train-subset", "512")
    process = start(command, tmp_path, log)
    experiment = tmp_path / "ray" / "term"
    wait_for(lambda: [t for t in trial_dirs(experiment) if len(epochs_reported(t)) == epochs],
             "a finished trial", process, log)
    ray_processes = descendants(process.pid)
    # SIGTERM: what `timeout` or a cluster scheduler sends; SIGKILL: no chance to clean up.
    process.send_signal(stop_signal)
    code = process.wait(timeout=WAIT_SECONDS)
    finished = {t.name: epochs_reported(t) for t in trial_dirs(experiment)
                if len(epochs_reported(t)) == epochs}
    assert 1 <= len(finished) < trials
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if stop_signal == signal.SIGTERM:
        assert code == EXIT_TERMINATED, log.read_text()[-3000:]
        runs = mlflow_runs(uri, "term")
        assert "RUNNING" not in set(runs["status"])  # nothing left in a false state
        parent = runs[runs["tags.mlflow.parentRunId"].isna()]
        assert list(parent["status"]) == ["KILLED"]
        killed = runs[runs["status"] == "KILLED"]
        assert set(killed["tags.gensweep.status"].dropna()) <= {"unfinished"}
    else:
        assert code == -signal.SIGKILL
        stop_leftovers(ray_processes)

    resume = sweep_command(data_dir, tmp_path, "term", "--resume")
    log2 = tmp_path / "resume.log"
    first = start(resume, tmp_path, log2)
    # The first --resume holds the sweep's lock once it prints its setup (before Ray starts).
    wait_for(lambda: "(resumed)" in log2.read_text(), "the resumed sweep to start", first, log2)
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
        assert metric_steps(client, run_id, "val_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))
    name = signal.Signals(stop_signal).name
    record_fault(f"driver {name}", f"{name} to the driver after a trial finished, then --resume",
                 f"exit {code}, resumed: exit 0; second --resume refused", experiment, uri, trials,
                 epochs)

    # Resume is about this sweep: a changed option of the sweep's own is refused, naming both.
    changed = subprocess.run([*resume, "--epochs", "5"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert changed.returncode == EXIT_BAD_INPUT
    assert "--epochs 5 differs from the sweep's 2" in changed.stderr


def member_epochs(group: Path) -> dict[str, list[int]]:
    """A fused group's reports: member id -> the epochs it reported, in order."""
    path = group / "result.json"
    seen: dict[str, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            for member, values in (json.loads(line).get("member_results") or {}).items():
                if "epoch" in values and values.get("status") == "running":
                    seen.setdefault(member, []).append(values["epoch"])
    return seen


@pytest.mark.slow
def test_stopped_fused_sweep_resumes_its_groups_with_nothing_lost_or_twice(data_dir, tmp_path):
    """--fuse 2: SIGTERM to the driver while the first group trains, then --resume: every
    configuration ends with each epoch once, in its folder and in its own MLflow run."""
    configs, epochs = 4, 3
    log = tmp_path / "sweep.log"
    command = sweep_command(data_dir, tmp_path, "fused", "--fuse", "2", "--num-samples",
                            str(configs), "--max-concurrent", "1", "--epochs", str(epochs),
                            "--train-subset", "256", "--test-top", "0")
    process = start(command, tmp_path, log)
    experiment = tmp_path / "ray" / "fused"

    def groups() -> list[Path]:
        return sorted(experiment.glob("train_group*")) if experiment.exists() else []

    wait_for(lambda: any(1 in e for g in groups() for e in member_epochs(g).values()),
             "the first group's first epoch", process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_TERMINATED, log.read_text()[-3000:]

    log2 = tmp_path / "resume.log"
    resumed = start(sweep_command(data_dir, tmp_path, "fused", "--resume"), tmp_path, log2)
    assert resumed.wait(timeout=2 * WAIT_SECONDS) == EXIT_OK, log2.read_text()[-3000:]

    assert len(groups()) == configs // 2  # no group started twice
    members = {m for g in groups() for m in member_epochs(g)}
    assert len(members) == configs
    for group in groups():
        for member, reported in member_epochs(group).items():
            # a group resumed from its checkpoint repeats no epoch (the last may be reported as
            # "finished" rather than "running": the epochs before it are all here, once)
            assert reported == list(range(1, len(reported) + 1)), (group.name, member, reported)
            assert (group / member / "samples" / f"epoch_{epochs:03d}.png").exists()
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "fused")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == configs  # one run per configuration, none duplicated by --resume
    assert set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in children.run_id:
        assert metric_steps(client, run_id, "val_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))


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


OUTAGE_SECONDS = 30  # how long the tracking server is away mid-sweep
SERVER_START_SECONDS = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, folder: Path) -> subprocess.Popen:
    """A real tracking server on 127.0.0.1 with proxied artifacts, its store in `folder`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + SERVER_START_SECONDS
    while time.time() < deadline:
        try:
            with urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail("mlflow server did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_tracking_server_away_mid_sweep_stalls_nothing_and_loses_nothing(data_dir, tmp_path):
    epochs, port, store = 8, free_port(), tmp_path / "server"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(port, store)
    log = tmp_path / "sweep.log"
    process = start(sweep_command(data_dir, tmp_path, "outage", "--num-samples", "1",
                                  "--epochs", str(epochs), "--mlflow-uri", uri), tmp_path, log)
    experiment = tmp_path / "ray" / "outage"
    try:
        wait_for(lambda: any(epochs_reported(t) for t in trial_dirs(experiment)),
                 "the first epoch", process, log)
        stop_server(server)  # the tracking server goes away...
        (trial,) = trial_dirs(experiment)
        before = len(epochs_reported(trial))
        time.sleep(OUTAGE_SECONDS)
        during = len(epochs_reported(trial)) - before
        server = start_server(port, store)  # ...and comes back, same store, same address
        assert process.wait(timeout=WAIT_SECONDS) == EXIT_OK, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        stop_server(server)
        server = start_server(port, store)  # for the checks below

    try:
        assert during >= 1, "training stalled while the tracking server was away"
        times = [json.loads(line)["time_this_iter_s"]
                 for line in (trial / "result.json").read_text().splitlines()]
        assert len(times) == epochs
        # No epoch waited for the server: one that did would take the whole outage, or more.
        assert max(times) < OUTAGE_SECONDS, times
        client = MlflowClient(uri)
        runs = mlflow_runs(uri, "outage")
        assert set(runs["status"]) == {"FINISHED"}
        (run_id,) = runs[runs["tags.mlflow.parentRunId"].notna()].run_id
        for metric in ("val_elbo", "train_loss", "epoch_seconds"):
            assert metric_steps(client, run_id, metric) == list(range(1, epochs + 1)), metric
        assert image_steps(client, run_id) == list(range(1, epochs + 1))
        assert {"figures/real_vs_reconstructed.png"} <= {
            a.path for a in client.list_artifacts(run_id, "figures")}
        record_fault("tracking server away", f"mlflow server stopped {OUTAGE_SECONDS} s mid-sweep",
                     f"{during} epoch(s) trained meanwhile, replayed, exit 0", experiment, uri, 1,
                     epochs)
    finally:
        stop_server(server)
