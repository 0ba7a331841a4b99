"""Sweeps on cloud storage: --storage-path s3://bucket/path on a real S3-compatible server
(SeaweedFS, tests/s3_server.py), reached through the AWS_* variables as a user reaches AWS or MinIO.
The sweep's own steps work there as on a disk: its options saved for --resume, an interrupted sweep
resumed with every epoch once, the test split of the chosen trials, orphans set aside, and analysis
reading the folder by its URI.

    pytest tests/test_storage.py -q
"""

import fnmatch
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import mlflow_runs
from mlflow.tracking import MlflowClient
from ray_cluster import CLUSTER_ENV, head_and_worker
from s3_server import BUCKET

from analysis import load_trials
from analysis.report import final_grid
from genmodels.names import (
    CHECKPOINT_FILE,
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    OPTIONS_FILE,
    PLACEMENT_FILE,
    STATUS_FILE,
    TEST_METRICS_FILE,
)
from results.folder import trained_model as final_model
from sweeps.orphans import ORPHANS_DIR
from sweeps.runner import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIALS_FAILED
from sweeps.storage import SweepFolder

REPO = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 300  # for a tiny trial to reach an epoch on a busy 2-core machine


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The VAE sweep as a user runs it (this test's environment: the S3 variables included)."""
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd)


def put(folder: SweepFolder, relative: str, content: bytes = b"{}") -> None:
    with folder.fs.open_output_stream(f"{folder.path}/{relative}") as out:
        out.write(content)


def files(folder: SweepFolder, relative: str = "") -> list[str]:
    """Every file under `relative`, as paths relative to the folder."""
    root = f"{folder.path}/{relative}".rstrip("/")
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return sorted(e.path[len(folder.path) + 1:] for e in folder.fs.get_file_info(selector)
                  if e.type == pafs.FileType.File)


def test_only_records_are_copied_and_only_the_final_model_is_fetched(s3, tmp_path):
    """The test split of a sweep on S3 reads a local copy of its small files, then downloads the
    model of each chosen trial only: an unfused trial's newest checkpoint (not the older ones), a
    fused member's weights. Checkpoints, weights and images of the others stay in the bucket."""
    folder = SweepFolder(f"s3://{BUCKET}/{tmp_path.name}/fetch")
    trial, member = "train_trial_aa_1_lr=0.001", "train_group_bb/m000"
    put(folder, f"{trial}/params.json")
    put(folder, f"{trial}/result.json", b'{"epoch": 2}\n')
    put(folder, f"{trial}/checkpoint_000000/{CHECKPOINT_FILE}", b"epoch 1")
    put(folder, f"{trial}/checkpoint_000001/{CHECKPOINT_FILE}", b"epoch 2")
    put(folder, f"{trial}/samples/epoch_002.png", b"png")
    put(folder, f"{member}/{MODEL_CONFIG_FILE}")
    put(folder, f"{member}/{MODEL_WEIGHTS_FILE}", b"weights")
    put(folder, f"{member}/real_vs_reconstructed.png", b"png")

    mirror = folder.download_records(tmp_path / "copy")
    local = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    assert local == [f"{member}/{MODEL_CONFIG_FILE}", f"{trial}/params.json", f"{trial}/result.json"]

    folder.fetch_final_model(mirror, mirror / trial)
    newest = mirror / trial / "checkpoint_000001" / CHECKPOINT_FILE
    assert final_model(mirror / trial) == newest and newest.read_bytes() == b"epoch 2"
    assert not (mirror / trial / "checkpoint_000000").exists()
    folder.fetch_final_model(mirror, mirror / member)
    assert final_model(mirror / member) == mirror / member
    assert (mirror / member / MODEL_WEIGHTS_FILE).read_bytes() == b"weights"
    assert not (mirror / member / "real_vs_reconstructed.png").exists()


def wait_for_file(folder: SweepFolder, pattern: str, process: subprocess.Popen, log: Path) -> None:
    """Until a file matching `pattern` (fnmatch, relative to the folder) is in the bucket."""
    deadline = time.time() + WAIT_SECONDS
    while not fnmatch.filter(files(folder), pattern):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"no {pattern} in {WAIT_SECONDS} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_sweep_on_s3_resumes_tests_its_chosen_trials_and_reads_by_its_uri(s3, data_dir, tmp_path):
    name = "on-s3"
    storage = f"s3://{BUCKET}/{tmp_path.name}"
    location = f"{storage}/{name}"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ["--data-dir", str(data_dir), "--storage-path", storage, "--name", name,
               "--mlflow-uri", mlflow_uri, "--num-samples", "2", "--max-concurrent", "1",
               "--epochs", "4", "--train-subset", "256", "--batch-size", "64",
               "--scheduler", "fifo"]
    # Ctrl-C once the first trial's first epoch is in the bucket (its grid goes up just before its
    # checkpoint), with three of its epochs and the second trial still to come (with two epochs
    # the signal once landed after the first trial's last); then --resume finishes the sweep.
    folder = SweepFolder(location)
    log = tmp_path / "interrupted.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), *command],
                                   cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_file(folder, "train_trial_*/samples/epoch_001.png", process, log)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT_SECONDS) == EXIT_INTERRUPTED, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert len(fnmatch.filter(files(folder), f"train_trial_*/{STATUS_FILE}")) < 2  # work left
    first = sweep("--storage-path", storage, "--name", name, "--resume", cwd=tmp_path)
    assert first.returncode == EXIT_OK, first.stderr[-3000:]
    assert "test split, once, for the best 3 by val_elbo" in first.stdout
    # Nothing lost, nothing twice: each trial's own MLflow run has every epoch once.
    runs = mlflow_runs(mlflow_uri, name)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(children) == 2 and set(runs["status"]) == {"FINISHED"}
    client = MlflowClient(mlflow_uri)
    for run_id in children.run_id:
        history = client.get_metric_history(run_id, "val_elbo")
        assert sorted(m.step for m in history) == [1, 2, 3, 4], run_id
    for trial in fnmatch.filter(folder.subfolders(), "train_trial_*"):  # and Ray's records
        with folder.fs.open_input_stream(f"{folder.path}/{trial}/result.json") as stored:
            lines = stored.read().decode().splitlines()
        # Tune records a report before the checkpoint saved with it: a stop between the two
        # trains that epoch again, so one epoch may show twice here (never in MLflow, above)
        reported = [json.loads(line)["epoch"] for line in lines if line.strip()]
        assert sorted(set(reported)) == [1, 2, 3, 4] and reported == sorted(reported), trial
        assert len(reported) <= 5, trial

    assert folder.exists(OPTIONS_FILE) and folder.exists("tuner.pkl")
    trials = [t for t in folder.subfolders() if t.startswith("train_trial")]
    assert len(trials) == 2
    for trial in trials:  # the test split's numbers beside each tested trial's results
        assert folder.read_json(f"{trial}/{TEST_METRICS_FILE}")["epoch"] == 4

    # analysis reads the sweep by its URI, as by a local folder...
    table = load_trials(location)
    assert len(table) == 2 and table["test_elbo"].notna().all()
    assert table["figures_dir"].str.startswith(f"{location}/train_trial").all()
    # rank.py's report shows each trial's last sample grid, fetched from the bucket
    grid = final_grid(table.iloc[0], {}, tmp_path / "cache")
    assert grid is not None and grid.name == "epoch_004.png"
    trial = SweepFolder(table["figures_dir"].iloc[0])
    with trial.fs.open_input_stream(f"{trial.path}/samples/epoch_004.png") as stored:
        assert grid.read_bytes() == stored.read()
    # ... and the test numbers reached each trial's MLflow run too
    assert load_trials(experiment=name, tracking_uri=mlflow_uri)["test_elbo"].notna().all()

    # The sweep exists: a second start is refused, and --resume keeps the sweep's own options.
    again = sweep(*command, cwd=tmp_path)
    assert again.returncode == EXIT_BAD_INPUT
    assert f"a sweep named '{name}' already exists in {storage}" in again.stderr
    changed = sweep(*command, "--resume", "--epochs", "3", cwd=tmp_path)
    assert changed.returncode == EXIT_BAD_INPUT
    assert "--epochs 3 differs from the sweep's 4" in changed.stderr

    # A trial folder no trial of Tune's owns (what a killed driver can leave) is set aside when the
    # resumed sweep ends; the real trials stay.
    orphan = "train_trial_cc_3_lr=0.002"
    put(folder, f"{orphan}/{PLACEMENT_FILE}")
    put(folder, f"{orphan}/checkpoint_000000/{CHECKPOINT_FILE}", b"weights")
    resumed = sweep("--storage-path", storage, "--name", name, "--resume", cwd=tmp_path)
    assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
    assert "set aside 1 trial(s)" in resumed.stdout
    assert files(folder, orphan) == []
    assert files(folder, f"{ORPHANS_DIR}/{orphan}") == [
        f"{ORPHANS_DIR}/{orphan}/checkpoint_000000/{CHECKPOINT_FILE}",
        f"{ORPHANS_DIR}/{orphan}/{PLACEMENT_FILE}"]
    assert sorted(t for t in folder.subfolders() if t.startswith("train_trial")
                  and files(folder, t)) == sorted(trials)


@pytest.mark.slow
def test_a_diverged_trial_on_s3_is_not_trained_again_by_resume(s3, data_dir, tmp_path):
    """A diverged trial ends at once when Tune retries or --resume restarts it. On cloud storage
    its earlier status.json is in the bucket, not in the working folder of the node that runs it:
    a resumed sweep is a new Ray session whose working folders start empty, as on another node."""
    name = "diverged-on-s3"
    storage = f"s3://{BUCKET}/{tmp_path.name}"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e+5, high: 1.0e+7, log: true}\n")  # NaN loss at once
    first = sweep("--data-dir", str(data_dir), "--storage-path", storage, "--name", name,
                  "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--space", str(space),
                  "--num-samples", "1", "--max-failures", "0", "--epochs", "2",
                  "--train-subset", "256", "--batch-size", "64", "--scheduler", "fifo",
                  cwd=tmp_path)
    assert first.returncode == EXIT_TRIALS_FAILED, first.stderr[-3000:]
    folder = SweepFolder(f"{storage}/{name}")
    (trial,) = [t for t in folder.subfolders() if t.startswith("train_trial")]
    assert folder.read_json(f"{trial}/{STATUS_FILE}")["status"] == "diverged"

    resumed = sweep("--storage-path", storage, "--name", name, "--resume", cwd=tmp_path)
    assert resumed.returncode == EXIT_TRIALS_FAILED, resumed.stderr[-3000:]
    with folder.fs.open_input_stream(f"{folder.path}/{trial}/error.txt") as stored:
        error = stored.read().decode()
    assert "TrialDivergedBefore: not trained again: training diverged at epoch 1" in error
    assert folder.read_json(f"{trial}/{STATUS_FILE}")["status"] == "diverged"


@pytest.mark.slow  # a sweep script per fault, each waiting for its answer
@pytest.mark.parametrize("fault", ["nothing listens", "wrong secret", "a query"])
def test_storage_it_cannot_read_is_a_clear_error_before_anything_starts(fault, s3, data_dir,
                                                                        tmp_path, monkeypatch):
    from ray_cluster import free_port

    if fault == "nothing listens":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    elif fault == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = f"s3://{BUCKET}/{tmp_path.name}"
    if fault == "a query":  # pyarrow's way to give an endpoint; the sweep's paths go under it
        storage += f"?endpoint_override={s3.env['AWS_ENDPOINT_URL'].split('//')[1]}"
    run_ = sweep("--data-dir", str(data_dir), "--storage-path", storage, "--name", "x",
                 cwd=tmp_path)
    assert run_.returncode == EXIT_BAD_INPUT
    problem = "a URI with a query (?...) is not supported" if fault == "a query" else "cannot read it"
    assert f"error: --storage-path {storage}: {problem}" in run_.stderr
    assert "AWS_ENDPOINT_URL" in run_.stderr  # the fix, named
    assert list(tmp_path.iterdir()) == []  # nothing written: no mlflow.db, no runs/, no log


NO_SUCH_BUCKET = "gs://gensweep-no-such-bucket/sweeps"  # here: no GCP credentials, no internet


@pytest.mark.slow  # waits out the bound
def test_cloud_storage_that_never_answers_is_a_clear_error_in_bounded_time(data_dir, tmp_path,
                                                                           monkeypatch):
    """gs:// without credentials: Google's client retries for 15 minutes before it fails (on this
    machine, with no internet, it never answers). The sweep gives up after REACH_SECONDS (3 s
    here), names the fix, writes nothing and exits; the probe left running does not hold the
    exit. (With credentials and internet the bucket's absence is the answer: the same error.)"""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    program = ("import sys; import sweeps.storage; sweeps.storage.REACH_SECONDS = 3; "
               "from sweeps.runner import run; sys.exit(run('vae', sys.argv[1:]))")
    run_ = subprocess.run([sys.executable, "-c", program, "--data-dir", str(data_dir),
                           "--storage-path", NO_SUCH_BUCKET, "--name", "x"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert run_.returncode == EXIT_BAD_INPUT, run_.stderr[-3000:]
    assert f"error: --storage-path {NO_SUCH_BUCKET}: cannot read it" in run_.stderr
    assert "GOOGLE_APPLICATION_CREDENTIALS" in run_.stderr  # the fix, named
    assert list(tmp_path.iterdir()) == []


def test_analysis_of_a_store_that_never_answers_fails_once_and_fast(tmp_path, monkeypatch):
    """load_trials on a URI that never answers is a LoadError after REACH_SECONDS; a report's
    figures from such a store (figures_dir URIs read from MLflow) wait once, not once a trial."""
    import sweeps.storage
    from analysis.load import LoadError
    from results.folder import local_trial_folder

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(sweeps.storage, "REACH_SECONDS", 1)
    with pytest.raises(LoadError, match="cannot read the sweep folder .*no answer in 1 s"):
        load_trials(NO_SUCH_BUCKET)
    with pytest.raises(LoadError, match="a URI with a query .* AWS_ENDPOINT_URL"):
        load_trials("s3://bucket/sweeps/x?endpoint_override=127.0.0.1:9000")
    cache = tmp_path / "cache"
    first = local_trial_folder(f"{NO_SUCH_BUCKET}/train_trial_a", cache)
    assert first.is_dir() and list(first.iterdir()) == []  # no figures: the report asks MLflow
    assert (cache / ".storage-silent").exists()  # so the next trial does not wait again
    second = local_trial_folder(f"{NO_SUCH_BUCKET}/train_trial_b", cache)
    assert second.is_dir() and list(second.iterdir()) == []


@pytest.fixture
def two_nodes_with_s3(s3, tmp_path):
    """A real two-node Ray cluster (a head and a worker with a /tmp/ray of its own, as on another
    machine; 1 CPU each) whose nodes have the S3 credentials, as a cluster's nodes would."""
    with head_and_worker(tmp_path / "nodes", env=s3.env) as address:
        yield address


@pytest.mark.slow
def test_fused_groups_on_two_nodes_upload_their_members_models_and_figures(two_nodes_with_s3,
                                                                           data_dir, tmp_path,
                                                                           monkeypatch):
    """On cloud storage a group on the worker node writes its members' figures, status and final
    model on that node: they must reach the bucket from there (Ray's staging folder on a node other
    than the driver's is copied nowhere), or the members trained there have no figures in their
    folder and are never tested."""
    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)
    storage, name = f"s3://{BUCKET}/{tmp_path.name}", "fused-2-nodes"
    run_ = sweep("--address", two_nodes_with_s3, "--data-dir", str(data_dir),
                 "--storage-path", storage, "--name", name,
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--fuse", "2", "--num-samples", "4", "--max-concurrent", "2",
                 "--cpus-per-trial", "1", "--epochs", "1", "--train-subset", "256",
                 "--batch-size", "64", "--scheduler", "fifo", "--test-top", "4", cwd=tmp_path)
    assert run_.returncode == EXIT_OK, run_.stderr[-3000:]
    folder = SweepFolder(f"{storage}/{name}")
    groups = [g for g in folder.subfolders() if g.startswith("train_group")]
    assert len(groups) == 2
    nodes = {folder.read_json(f"{group}/{PLACEMENT_FILE}")["node_id"] for group in groups}
    assert len(nodes) == 2  # one group ran on the worker node
    for group in groups:
        members = [m for m in SweepFolder(f"{storage}/{name}/{group}").subfolders()
                   if m.startswith("m")]
        assert len(members) == 2
        for member in members:
            stored = set(files(folder, f"{group}/{member}"))
            for file in (MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE, STATUS_FILE, TEST_METRICS_FILE,
                         "real_vs_reconstructed.png", "samples/epoch_001.png"):
                assert f"{group}/{member}/{file}" in stored, (group, member, sorted(stored))
