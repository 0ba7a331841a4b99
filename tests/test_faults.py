"""Faults a long sweep meets, each injected for real: a trial's worker SIGKILLed mid-run, the
driver stopped by SIGINT (Ctrl-C) or SIGKILL and resumed (with a second --resume refused
meanwhile; SIGTERM stops the sweep that then meets a corrupt checkpoint and a copied folder, and
the fused sweep), the tracking server away for 15 s mid-sweep, a node of a two-node cluster lost,
and checkpoints that are truncated or crafted to run code.

    pytest tests/test_faults.py -q
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
import torch
from conftest import mlflow_runs
from mlflow.tracking import MlflowClient
from ray_cluster import (
    CLUSTER_ENV,
    forget_cluster,
    free_port,
    kill_node,
    on_node,
    start_head,
    start_node,
    stop_node,
)

from genmodels.data import load_dataset
from genmodels.files import read_status
from genmodels.loop import TrainConfig, Trainer, TrainingDiverged
from genmodels.vae import VAEConfig
from sweeps.runner import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_TRIALS_FAILED
from trainables.lifecycle import CheckpointError, resume_from

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
    from trainables.mlflow_trial import image_step

    steps = (image_step(a.path) for a in client.list_artifacts(run_id, "images"))
    return sorted(s for s in steps if s is not None)


def record_fault(scenario: str, injected: str, outcome: str, experiment: Path, uri: str,
                 trials: int, epochs: int) -> None:
    """What the sweep kept, counted from its own folder and MLflow, for bench/faults.py's table
    (written only when $GENSWEEP_FAULT_REPORT names a folder). A trial is kept when it finished
    (all `epochs`), diverged (its status.json says so) or failed with its reason (its error.txt);
    any other requested trial is lost. Epochs expected in MLflow: every epoch a trial completed."""
    folder = os.environ.get(REPORT_ENV)
    if not folder:
        return
    dirs = trial_dirs(experiment)
    ended = {"finished": 0, "diverged": 0, "failed": 0}
    epochs_expected = 0
    for trial in dirs:
        status = read_status(trial)
        if status.get("status") in ("finished", "diverged"):
            ended[status["status"]] += 1
            done = epochs if status["status"] == "finished" else status["epoch"] - 1
        else:
            ended["failed"] += (trial / "error.txt").exists()
            done = len(set(epochs_reported(trial)))
        epochs_expected += done
    runs = mlflow_runs(uri, experiment.name)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    client = MlflowClient(uri)
    steps = [metric_steps(client, r, "val_elbo") for r in children.run_id]
    stalls = [json.loads(line)["time_this_iter_s"] for t in dirs if (t / "result.json").exists()
              for line in (t / "result.json").read_text().splitlines()]
    row = {"scenario": scenario, "injected": injected, "outcome": outcome,
           "trials_requested": trials, "trials_finished": ended["finished"],
           "trials_diverged": ended["diverged"], "trials_failed": ended["failed"],
           "trials_lost": trials - sum(ended.values()), "epochs_expected": epochs_expected,
           "epochs_found": sum(len(set(s)) for s in steps),
           "runs_running": int((runs["status"] == "RUNNING").sum()),
           "duplicates": sum(len(s) - len(set(s)) for s in steps)
           + len(children) - children["tags.ray.trial_id"].nunique(),
           "longest_epoch_s": round(max(stalls, default=0.0), 1)}
    with (Path(folder) / "faults.jsonl").open("a") as out:
        out.write(json.dumps(row) + "\n")


@pytest.mark.slow
def test_diverging_trials_are_failed_with_their_reason_and_the_sweep_goes_on(data_dir, tmp_path):
    """Learning rates up to 1e7 (Adam steps that make the loss NaN at once): those trials end
    diverged and FAILED with the reason, Optuna is told they failed, and the others finish."""
    trials, epochs = 3, 2
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-3, high: 1.0e+7, log: true}\n")  # the default 1e-3 first
    log = tmp_path / "sweep.log"
    process = start(sweep_command(data_dir, tmp_path, "diverge", "--num-samples", str(trials),
                                  "--epochs", str(epochs), "--train-subset", "256",
                                  "--space", str(space), "--test-top", "1"), tmp_path, log)
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_TRIALS_FAILED, log.read_text()[-3000:]
    assert "failed or diverged" in log.read_text()
    experiment = tmp_path / "ray" / "diverge"
    statuses = {t.name: read_status(t) for t in trial_dirs(experiment)}
    assert len(statuses) == trials
    diverged = [name for name, s in statuses.items() if s["status"] == "diverged"]
    finished = [name for name, s in statuses.items() if s["status"] == "finished"]
    assert diverged and finished and len(diverged) + len(finished) == trials
    for name in diverged:  # Ray's error is the real one (TrainingDiverged pickles), no TypeError
        error = (experiment / name / "error.txt").read_text()
        assert "training diverged at epoch 1" in error and "TypeError" not in error
        # Tune retries every error (--max-failures 2): a diverged trial's retries end at once
        retries = error.split("Failure # ")[2:]
        assert len(retries) == 2 and all("TrialDivergedBefore: not trained again" in r
                                          for r in retries)
    (searcher,) = experiment.glob("searcher-state-*.pkl")
    study = pickle.loads(searcher.read_bytes())["study"]  # (MemberStudy.state)
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted(["FAIL"] * len(diverged) + ["COMPLETE"] * len(finished))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "diverge")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    failed = children[children["status"] == "FAILED"]
    assert len(failed) == len(diverged) and set(failed["tags.gensweep.status"]) == {"diverged"}
    assert all("diverged" in reason for reason in failed["tags.gensweep.failure_reason"])
    assert (children[children["status"] != "FAILED"]["tags.gensweep.status"] == "finished").all()
    assert "RUNNING" not in set(runs["status"])
    record_fault("divergence", "learning rates up to 1e7 (NaN loss at once)",
                 f"{len(diverged)} diverged: FAILED with the reason, Optuna told FAIL; the rest "
                 "finished; exit 3", experiment, uri, trials, epochs)


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
    study = pickle.loads(searcher.read_bytes())["study"]  # (MemberStudy.state)
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
    """Ray's processes die with a SIGKILLed driver (fate sharing), but only once they notice, up
    to half a minute later; they are this test's own, so they are killed now, by pid, and the
    resumed sweep never runs beside a trial of the killed one."""
    for pid in pids:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(POLL_SECONDS)


@pytest.mark.slow
# SIGKILL here. A stop by signal (Tune's graceful stop, runs KILLED, --resume; SIGTERM takes
# SIGINT's path) is the corrupt-checkpoint and shrunk-group tests' (SIGTERM), test_storage's S3
# resume (Ctrl-C) and test_startup's (Ctrl-C as a trial starts).
@pytest.mark.parametrize("stop_signal", [signal.SIGKILL], ids=["SIGKILL"])
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
    # SIGINT: Ctrl-C; SIGKILL: no chance to clean up.
    process.send_signal(stop_signal)
    code = process.wait(timeout=WAIT_SECONDS)
    finished = {t.name: epochs_reported(t) for t in trial_dirs(experiment)
                if len(epochs_reported(t)) == epochs}
    assert 1 <= len(finished) < trials
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if stop_signal == signal.SIGINT:
        assert code == EXIT_INTERRUPTED, log.read_text()[-3000:]  # 130, though Tune swallows it
        runs = mlflow_runs(uri, "term")
        assert "RUNNING" not in set(runs["status"])  # nothing left in a false state
        parent = runs[runs["tags.mlflow.parentRunId"].isna()]
        assert list(parent["status"]) == ["KILLED"]
        killed = runs[runs["status"] == "KILLED"]
        # "unfinished", never "stopped_early" (which the analysis ranks as usable)
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
    # resumed trials continued their own runs
    assert sorted(children["tags.ray.trial_id"]) == sorted(t.name.split("_")[2] for t in all_trials)
    assert set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(uri)
    for run_id in children.run_id:
        assert metric_steps(client, run_id, "val_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))
    # How each configuration was chosen, recorded by the resumed sweep from its restored study:
    # one at a time, so the second was asked after one had ended, the third after two (TPE's
    # start-up for 3 configurations)
    sampled = json.loads((experiment / "sampled.json").read_text())
    assert sorted(sampled) == sorted(t.name.split("_")[2] for t in all_trials)
    assert sorted(sampled.values()) == ["default", "guided", "random"]
    name = signal.Signals(stop_signal).name
    record_fault(f"driver {name}", f"{name} to the driver after a trial finished, then --resume",
                 f"exit {code}, resumed: exit 0; second --resume refused", experiment, uri, trials,
                 epochs)

    if stop_signal != signal.SIGINT:
        return
    # Resume is about this sweep: a changed option of the sweep's own is refused, naming both
    # (whatever stopped it: checked once).
    changed = subprocess.run([*resume, "--epochs", "5"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert changed.returncode == EXIT_BAD_INPUT
    assert "--epochs 5 differs from the sweep's 2" in changed.stderr


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_trials_a_killed_driver_never_recorded_are_set_aside_not_left_as_duplicates(storage, tmp_path,
                                                                                   request):
    """A driver killed right after starting a trial (the SIGKILL test above, on a loaded machine)
    leaves that trial's folder and MLflow run outside Tune's saved state; --resume runs its
    configuration again as a new trial. At the end of the sweep the orphans are moved to
    `orphaned/` and their runs deleted (restorable); the real trials are untouched. The same on a
    local disk and on S3 (a real S3-compatible server, tests/s3_server.py), where a folder is only
    a prefix of object names and moving one is copying every object."""
    import pyarrow.fs as pafs

    from genmodels.names import PARENT_RUN_TAG, PLACEMENT_FILE, TRIAL_DIR_TAG
    from sweeps.mlflow_sweep import open_sweep
    from sweeps.orphans import ORPHANS_DIR, set_aside_orphans
    from sweeps.storage import SweepFolder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if storage == "s3":
        from s3_server import BUCKET

        request.getfixturevalue("s3")
        location = f"s3://{BUCKET}/{tmp_path.name}/term"
    else:
        location = str(tmp_path / "ray" / "term")
    experiment = SweepFolder(location)

    def write(relative: str, content: bytes = b"{}") -> None:
        experiment.fs.create_dir(f"{experiment.path}/{relative.rsplit('/', 1)[0]}")
        with experiment.fs.open_output_stream(f"{experiment.path}/{relative}") as out:
            out.write(content)

    known = {"train_trial_aa_1_lr=0.001", "train_trial_bb_2_lr=0.002"}
    orphans = ["train_trial_cc_2_lr=0.002", "train_group_dd"]  # an unfused trial, a fused group
    for name in [*known, *orphans]:
        write(f"{name}/checkpoint_000000/checkpoint.pt", b"weights")
        write(f"{name}/{PLACEMENT_FILE}")
    write("not_a_trial/notes.txt", b"")  # no placement.json: not ours to move
    tracking = open_sweep(uri, "term", "vae", location, {"metric": "val_elbo"}, "", False)
    client = MlflowClient(uri)

    def run(folder: str) -> str:
        return client.create_run(tracking.experiment_id, tags={
            PARENT_RUN_TAG: tracking.parent_run_id,
            TRIAL_DIR_TAG: f"{location}/{folder}"}).info.run_id

    kept = [run(name) for name in known]
    # A run whose folder shares the orphan's prefix (LIKE's _ is a wildcard too) stays.
    kept.append(run("train_trial_cc_2_lr=0.002x"))
    gone = [run(orphans[0]), run(f"{orphans[1]}/m000"), run(f"{orphans[1]}/m001")]

    assert sorted(set_aside_orphans(experiment, known, tracking)) == sorted(orphans)
    for name in orphans:
        # not a file left where the orphan was (SeaweedFS may keep the emptied folder's name)
        left = pafs.FileSelector(f"{experiment.path}/{name}", recursive=True, allow_not_found=True)
        assert experiment.fs.get_file_info(left) == []
        # nothing lost: the checkpoint moved with its folder, whole
        moved = f"{ORPHANS_DIR}/{name}/checkpoint_000000/checkpoint.pt"
        with experiment.fs.open_input_stream(f"{experiment.path}/{moved}") as stream:
            assert stream.read() == b"weights"
    assert all(experiment.exists(f"{name}/{PLACEMENT_FILE}") for name in known)
    assert experiment.exists("not_a_trial/notes.txt")
    assert [client.get_run(r).info.lifecycle_stage for r in gone] == ["deleted"] * 3
    assert {client.get_run(r).info.lifecycle_stage for r in kept} == {"active"}
    assert set_aside_orphans(experiment, known, tracking) == []  # a second run finds none


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


def resumed_epochs_ok(reported: list[int]) -> bool:
    """A member's epochs in a group's result.json after a stop or a kill: none lost, in order, and
    at most one twice. Tune records a result before the checkpoint saved with it is registered;
    a stop between the two trains that epoch again from the checkpoint before it. (The MLflow
    runs, which the tests check too, hold each epoch once.)"""
    once = sorted(set(reported))
    return once == list(range(1, len(once) + 1)) and reported == sorted(reported) \
        and len(reported) - len(once) <= 1


@pytest.mark.slow
# SIGKILL only: a fused group's SIGTERM path (Tune's graceful stop, then --resume from its
# checkpoint) is test_a_fused_group_that_shrank_resumes_after_a_stop's.
@pytest.mark.parametrize("stop_signal", [signal.SIGKILL], ids=["SIGKILL"])
def test_stopped_fused_sweep_resumes_its_groups_with_nothing_lost_or_twice(stop_signal, data_dir,
                                                                          tmp_path):
    """--fuse 2, one group at a time: the group's two members finish and two fresh
    configurations take their slots; SIGTERM (or SIGKILL: no chance to save anything) to the
    driver while those train, then --resume: every configuration ends with each of its epochs
    once, in its folder and in its own MLflow run."""
    configs, epochs = 4, 3
    log = tmp_path / "sweep.log"
    command = sweep_command(data_dir, tmp_path, "fused", "--fuse", "2", "--num-samples",
                            str(configs), "--max-concurrent", "1", "--epochs", str(epochs),
                            "--train-subset", "256", "--test-top", "0")
    process = start(command, tmp_path, log)
    experiment = tmp_path / "ray" / "fused"

    def groups() -> list[Path]:
        return sorted(experiment.glob("train_group*")) if experiment.exists() else []

    wait_for(lambda: any(1 in member_epochs(g).get("m002", []) for g in groups()),
             "the first refill's first epoch", process, log)
    ray_processes = descendants(process.pid)
    process.send_signal(stop_signal)
    code = process.wait(timeout=WAIT_SECONDS)
    if stop_signal == signal.SIGKILL:
        assert code == -signal.SIGKILL
        stop_leftovers(ray_processes)
    else:
        assert code == EXIT_TERMINATED, log.read_text()[-3000:]

    log2 = tmp_path / "resume.log"
    resumed = start(sweep_command(data_dir, tmp_path, "fused", "--resume"), tmp_path, log2)
    assert resumed.wait(timeout=2 * WAIT_SECONDS) == EXIT_OK, log2.read_text()[-3000:]

    assert len(groups()) == 1  # no group started twice; the refills trained in the first
    members = {m for g in groups() for m in member_epochs(g)}
    assert len(members) == configs
    for group in groups():
        for member, reported in member_epochs(group).items():
            # (the last epoch may be reported as "finished" rather than "running")
            assert resumed_epochs_ok(reported), (group.name, member, reported)
            assert (group / member / "samples" / f"epoch_{epochs:03d}.png").exists()
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "fused")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == configs  # one run per configuration, none duplicated by --resume
    assert set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in children.run_id:
        assert metric_steps(client, run_id, "val_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))


def member_statuses(group: Path) -> dict[str, str]:
    """A fused group's members and their status in its last report."""
    path = group / "result.json"
    lines = path.read_text().splitlines() if path.exists() else []
    last = json.loads(lines[-1]).get("member_results") or {} if lines else {}
    return {member: values.get("status") for member, values in last.items()}


@pytest.mark.slow
def test_a_killed_fused_group_is_retried_with_its_refill_and_loses_nothing(data_dir, tmp_path):
    """--fuse 2, 3 configurations, one group: m000 and m001 finish, m002 takes a freed slot; the
    group's worker is killed after m002's first epoch. The retry restores the group from its
    checkpoint, m002 included, and finishes it: each configuration's epochs once, one Optuna trial
    each, all complete."""
    epochs = 12  # seconds of the refill's training after its first epoch, for the kill to land in
    log = tmp_path / "sweep.log"
    process = start(sweep_command(data_dir, tmp_path, "refilled", "--fuse", "2", "--num-samples", "3",
                                  "--max-concurrent", "1", "--epochs", str(epochs), "--test-top", "0"),
                    tmp_path, log)
    experiment = tmp_path / "ray" / "refilled"

    def groups() -> list[Path]:
        return sorted(experiment.glob("train_group*")) if experiment.exists() else []

    wait_for(lambda: any(1 in member_epochs(g).get("m002", []) for g in groups()),
             "the refill's first epoch", process, log)
    workers = wait_for(lambda: [p for p, args in descendants(process.pid).items()
                                if args.startswith("ray::ImplicitFunc")],
                       "the group's worker process", process, log)
    for pid in workers:
        subprocess.run(["kill", "-KILL", str(pid)], check=True)
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_OK, log.read_text()[-3000:]

    (group,) = groups()
    assert "Failure # 1" in (group / "error.txt").read_text()  # the kill did hit it
    assert member_statuses(group) == {"m000": "finished", "m001": "finished", "m002": "finished"}
    for member, reported in member_epochs(group).items():
        assert resumed_epochs_ok(reported), (member, reported)
    (searcher,) = experiment.glob("searcher-state-*.pkl")
    study = pickle.loads(searcher.read_bytes())["study"]  # (MemberStudy.state)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "refilled")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 3 and set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(uri)
    for run_id in children.run_id:
        assert metric_steps(client, run_id, "val_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))


@pytest.mark.slow
def test_a_fused_group_that_shrank_resumes_after_a_stop(data_dir, tmp_path):
    """ASHA stops the group's member of the larger latent size (seed 0: m001, latent_dim 28
    against the default's 20) at epoch 2 and the group trains on without it; SIGTERM; --resume
    rebuilds the group from its checkpoint, as wide as it was, and finishes it. (It failed:
    'size mismatch for dec1.weight', every retry, and the members still training were lost.)"""
    epochs = 20  # seconds of training left after the stop, for the signal to land in
    log = tmp_path / "sweep.log"
    command = sweep_command(data_dir, tmp_path, "shrunk", "--fuse", "2", "--num-samples", "2",
                            "--epochs", str(epochs), "--train-subset", "1024", "--test-top", "0",
                            "--scheduler", "asha", "--grace-period", "1")
    process = start(command, tmp_path, log)
    experiment = tmp_path / "ray" / "shrunk"

    def stopped_member() -> bool:
        groups = list(experiment.glob("train_group*")) if experiment.exists() else []
        return bool(groups) and member_statuses(groups[0]).get("m001") == "stopped_early"

    wait_for(stopped_member, "m001 stopped early", process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_TERMINATED, log.read_text()[-3000:]
    (group,) = experiment.glob("train_group*")
    assert member_statuses(group) == {"m000": "running", "m001": "stopped_early"}  # cut short

    log2 = tmp_path / "resume.log"
    resumed = start(sweep_command(data_dir, tmp_path, "shrunk", "--resume", "--scheduler", "asha"),
                    tmp_path, log2)
    assert resumed.wait(timeout=2 * WAIT_SECONDS) == EXIT_OK, log2.read_text()[-3000:]
    assert member_statuses(group) == {"m000": "finished", "m001": "stopped_early"}
    reported = member_epochs(group)["m000"]
    assert resumed_epochs_ok(reported), reported
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "shrunk")
    m000 = runs[runs["tags.mlflow.runName"].str.endswith("-m000")].run_id.item()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert metric_steps(client, m000, "val_elbo") == list(range(1, epochs + 1))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: relative path -> (size, modification time in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_stopped_sweep_resumes_a_corrupt_checkpoint_as_a_failed_trial_and_a_copy_into_itself(
        data_dir, tmp_path):
    """SIGTERM to the driver mid-trial; the sweep folder copied elsewhere as it was stopped. Then:
    - the original's cut trial has its checkpoints truncated (a disk that filled up, a copy cut
      short) and the original is resumed: that trial ends FAILED with a clear reason (never
      trained from a wrong state), the rest of the sweep finishes;
    - the copy is resumed: the original's folder and MLflow runs stay exactly as they were; the
      copy finishes under a parent run of its own, each trial's run holding every epoch once (the
      epochs trained before the copy are written from the trial's own checkpoint)."""
    # Enough epochs left after the first that the trial is still training when Tune acts on the
    # signal (about 0.4 s later here). With 3 epochs of 512 images a trial once finished in that
    # window: finished in its own records (MLflow, status.json) while Tune, which had not taken
    # its last report, resumed it from the epoch before. Then there is no cut trial to test.
    trials, epochs = 2, 5
    log = tmp_path / "sweep.log"
    process = start(sweep_command(data_dir, tmp_path, "stopped", "--num-samples", str(trials),
                                  "--max-concurrent", "1", "--epochs", str(epochs),
                                  "--train-subset", "1024", "--test-top", "0"), tmp_path, log)
    original = tmp_path / "ray" / "stopped"
    wait_for(lambda: any(epochs_reported(t) for t in trial_dirs(original)), "a checkpoint",
             process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT_SECONDS) == EXIT_TERMINATED, log.read_text()[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stopped = mlflow_runs(uri, "stopped")
    # SIGTERM, like Ctrl-C: the sweep and its cut trial KILLED (unfinished, resumable), none RUNNING
    assert "RUNNING" not in set(stopped["status"])
    (parent,) = stopped[stopped["tags.mlflow.parentRunId"].isna()].run_id
    assert stopped[stopped.run_id == parent]["status"].item() == "KILLED"
    cut_runs = stopped[stopped["tags.mlflow.parentRunId"].notna() & (stopped["status"] != "FINISHED")]
    assert set(cut_runs["status"]) == {"KILLED"}
    assert set(cut_runs["tags.gensweep.status"].dropna()) <= {"unfinished"}  # never "stopped_early"
    copy = tmp_path / "elsewhere" / "stopped"
    shutil.copytree(original, copy)

    (cut,) = [t for t in trial_dirs(original) if read_status(t).get("status") != "finished"]
    checkpoints = list(cut.glob("checkpoint_*/checkpoint.pt"))
    assert checkpoints
    for path in checkpoints:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    log2 = tmp_path / "resume.log"
    resumed = start(sweep_command(data_dir, tmp_path, "stopped", "--resume"), tmp_path, log2)
    assert resumed.wait(timeout=WAIT_SECONDS) == EXIT_TRIALS_FAILED, log2.read_text()[-3000:]
    assert "cannot resume this trial: its checkpoint checkpoint.pt is unreadable" in log2.read_text()
    statuses = {t.name: read_status(t).get("status") for t in trial_dirs(original)}
    assert len(statuses) == trials and statuses[cut.name] is None  # failed, not "finished"
    assert sum(s == "finished" for s in statuses.values()) == trials - 1
    runs = mlflow_runs(uri, "stopped")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    failed = children[children["status"] == "FAILED"]
    assert len(failed) == 1
    assert "unreadable or unsafe" in failed["tags.gensweep.failure_reason"].iloc[0]
    assert "RUNNING" not in set(runs["status"]) and len(children) == trials
    record_fault("corrupt checkpoint", "a trial's checkpoints truncated while the sweep was "
                 "stopped (SIGTERM), then --resume", "that trial FAILED with the reason "
                 "(CheckpointError), the other finished; exit 3", original, uri, trials, epochs)

    before_runs = runs[["run_id", "status", "end_time"]]
    before_files = snapshot(original)
    log3 = tmp_path / "resume-copy.log"
    command = sweep_command(data_dir, tmp_path, "stopped", "--resume")
    command[command.index("--storage-path") + 1] = str(copy.parent)
    resumed = start(command, tmp_path, log3)
    assert resumed.wait(timeout=WAIT_SECONDS) == EXIT_OK, log3.read_text()[-3000:]

    assert snapshot(original) == before_files  # not a byte of the original touched
    runs = mlflow_runs(uri, "stopped")
    kept = runs[runs.run_id.isin(before_runs.run_id)][["run_id", "status", "end_time"]]
    assert kept.sort_values("run_id").reset_index(drop=True).equals(
        before_runs.sort_values("run_id").reset_index(drop=True))
    assert len(trial_dirs(copy)) == trials
    for trial in trial_dirs(copy):  # the copy's cut trial resumed from its intact checkpoint
        assert read_status(trial)["status"] == "finished"
        assert sorted(set(epochs_reported(trial))) == list(range(1, epochs + 1))
    new = runs[~runs.run_id.isin(before_runs.run_id)]
    (copy_parent,) = new[new["tags.mlflow.parentRunId"].isna()].run_id
    assert new[new.run_id == copy_parent]["tags.gensweep.sweep_dir"].item() == str(copy)
    children = new[new["tags.mlflow.parentRunId"] == copy_parent]
    assert len(children) == trials and set(new["status"]) == {"FINISHED"}
    client = MlflowClient(uri)
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


OUTAGE_SECONDS = 15  # how long the tracking server is away mid-sweep
SERVER_START_SECONDS = 120


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
        if server.poll() is not None:  # a failure while it was away: back, for the checks below
            server = start_server(port, store)

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


@pytest.mark.slow
def test_lost_node_moves_its_trial_to_the_surviving_node_from_its_checkpoint(data_dir, tmp_path):
    """A real two-node Ray cluster on loopback (a head and a worker node, 1 CPU each, one trial
    on each); the worker node is killed outright (all its processes) once its trial has
    checkpointed an epoch. The trial is retried on the head from that checkpoint and finishes;
    the sweep's storage (this test's folder) is reachable from both nodes, as a shared file
    system is on a real cluster."""
    trials, epochs = 2, 5
    head, address = start_head(tmp_path / "head.log", "--num-cpus=1", "--num-gpus=0")
    nodes = [head]
    log = tmp_path / "sweep.log"
    experiment = tmp_path / "ray" / "lost"
    process = None
    try:
        worker = start_node(tmp_path / "worker.log", f"--address={address}", "--num-cpus=1",
                            "--num-gpus=0")
        nodes.append(worker)
        command = sweep_command(data_dir, tmp_path, "lost", "--address", address,
                                "--num-samples", str(trials), "--max-concurrent", str(trials),
                                "--cpus-per-trial", "1", "--epochs", str(epochs),
                                "--train-subset", "1024", "--test-top", "0")
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=tmp_path, stdout=out,
                                       stderr=subprocess.STDOUT, text=True, env=CLUSTER_ENV)

        def worker_trial() -> Path | None:
            """The trial on the worker node, once its first epoch's checkpoint is stored."""
            for trial in trial_dirs(experiment):
                placement = trial / "placement.json"
                if (placement.exists() and epochs_reported(trial)
                        and on_node(json.loads(placement.read_text())["pid"], worker)):
                    return trial
            return None

        moved = wait_for(worker_trial, "a checkpointed epoch on the worker node", process, log)
        lost_node = json.loads((moved / "placement.json").read_text())["node_id"]
        reported_before = len(epochs_reported(moved))
        kill_node(worker)  # the node goes away: raylet, object store and the trial's worker
        assert process.wait(timeout=2 * WAIT_SECONDS) == EXIT_OK, log.read_text()[-3000:]
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        for node in reversed(nodes):
            stop_node(node)
        forget_cluster(address)

    assert "Failure # 1" in (moved / "error.txt").read_text()  # the node's loss hit the trial
    placement = json.loads((moved / "placement.json").read_text())
    assert placement["node_id"] != lost_node  # it finished on the surviving node
    reported = epochs_reported(moved)
    assert sorted(set(reported)) == list(range(1, epochs + 1))
    assert reported[:reported_before] == list(range(1, reported_before + 1))
    assert reported.count(1) == 1  # resumed from its checkpoint: epoch 1 not trained again
    all_trials = trial_dirs(experiment)
    assert len(all_trials) == trials  # retried, not replaced
    for trial in all_trials:
        assert read_status(trial)["status"] == "finished", trial.name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "lost")
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == trials and set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(uri)
    for run_id in children.run_id:
        assert metric_steps(client, run_id, "val_elbo") == list(range(1, epochs + 1))
        assert image_steps(client, run_id) == list(range(1, epochs + 1))
    record_fault("node lost", "SIGKILL to every process of the worker node after its trial's "
                 "epoch 1 (two-node cluster)", "trial retried on the head from its checkpoint, "
                 "exit 0", experiment, uri, trials, epochs)
