"""Sweeps end to end on a real Ray: local, on a two-node cluster with a logical GPU, and every check
that must fail before a trial starts (the GAN's scores in a sweep: tests/test_smoke.py; interrupted
and resumed sweeps: tests/test_faults.py).

    pytest tests/test_sweeps.py -q
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import CLUSTER_ENV, head_and_worker, listening_addresses, process_tree

from sweeps.runner import run
from sweeps.search_space import default_point, is_default_config, search_space

REPO = Path(__file__).resolve().parent.parent
TINY = ["--train-subset", "256", "--batch-size", "64", "--cpus-per-trial", "1", "--epochs", "1"]


def sweep(model: str, *args: str, env: dict | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The sweep script as a user runs it; MLflow's default mlflow.db lands in `cwd`."""
    return subprocess.run([sys.executable, str(REPO / "sweeps" / f"{model}_sweep.py"), *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd, env=env)


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("train_trial"))


def results(trial: Path) -> list[dict]:
    path = trial / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def placement(trial: Path) -> dict:
    return json.loads((trial / "placement.json").read_text())


def listening_while_a_trial_runs(args: list[str], cwd: Path, trials: Path):
    """Run the sweep script (as `sweep` does) and, once its first trial has started, the addresses
    its whole process tree (the driver, Ray's servers, the trial's worker) listens on."""
    with (cwd / "out.txt").open("w") as out, (cwd / "err.txt").open("w") as err:
        process = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), *args],
                                   cwd=cwd, stdout=out, stderr=err, text=True)
    try:
        deadline = time.time() + 300
        while not list(trials.glob("train_trial_*/placement.json")):
            assert process.poll() is None and time.time() < deadline, "no trial started"
            time.sleep(0.2)
        tree = process_tree(process.pid)
        addresses = listening_addresses(tree)
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    run_ = subprocess.CompletedProcess(args, process.returncode, (cwd / "out.txt").read_text(),
                                       (cwd / "err.txt").read_text())
    return run_, tree, addresses


@pytest.mark.slow
def test_vae_sweep_end_to_end(data_dir, tmp_path):
    # A file:// URI is a local folder to Ray and to the sweep's own steps (the test split below)
    run_, tree, addresses = listening_while_a_trial_runs(
        ["--data-dir", str(data_dir), "--storage-path", f"file://{tmp_path}", "--name", "vae",
         "--num-samples", "3", "--max-concurrent", "2", "--epochs", "2", "--train-subset", "256",
         "--batch-size", "64", "--scheduler", "fifo"], tmp_path, tmp_path / "vae")
    assert run_.returncode == 0, run_.stderr[-3000:]
    assert "best trials by val_elbo" in run_.stdout
    final_table = run_.stdout.split("best trials by val_elbo")[1]  # names the trials as Tune does
    # Nothing a local sweep starts can be reached from the network: every listening socket of its
    # process tree (the driver, Ray's servers and the trial's worker) is on 127.0.0.1.
    assert len(tree) > 3 and addresses
    assert addresses == {"127.0.0.1"}, addresses
    trials = trial_dirs(tmp_path / "vae")
    assert len(trials) == 3
    assert all(t.name.split("_")[2] in final_table for t in trials)  # train_trial_<id>_<n>_...
    assert not (tmp_path / "vae" / "orphaned").exists()  # every trial folder is one Tune knows
    for trial in trials:
        history = results(trial)
        assert [r["epoch"] for r in history] == [1, 2]
        assert {"val_elbo", "val_kl", "val_recon", "train_loss"} <= set(history[-1])
        assert not any(k.startswith("test_") for r in history for k in r)
        assert (trial / "samples" / "epoch_002.png").exists()
        assert (trial / "real_vs_reconstructed.png").exists()
        assert json.loads((trial / "status.json").read_text())["status"] == "finished"
        config = json.loads((trial / "params.json").read_text())
        assert set(config) == {"dropout", "latent_dim", "lr"}
    # The test split, once, at the end, for the best --test-top (default 3: all three here).
    tested = [json.loads((t / "test_metrics.json").read_text()) for t in trials]
    assert all({"test_elbo", "test_iwae"} <= set(t) and t["epoch"] == 2 for t in tested)
    configs = [json.loads((t / "params.json").read_text()) for t in trials]
    assert len({c["lr"] for c in configs}) == 3  # Optuna sampled three different trials
    # The first trial (train_trial_<id>_1_...) is the seed's default configuration, and only it.
    first = next(t for t in trials if t.name.split("_")[3] == "1")
    assert json.loads((first / "params.json").read_text()) == default_point("vae", search_space("vae"))
    assert sum(is_default_config(c, "vae") for c in configs) == 1
    assert "Optuna TPE (seed 0): trial 1 the default, 2 random start-up, 0 guided" in run_.stdout


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A real Ray cluster on this machine: a head with 1 CPU and 1 logical GPU, a worker with 1 CPU
    (started as a user would, with `ray start`)."""
    with head_and_worker(tmp_path_factory.mktemp("ray-nodes"), head_gpus=1) as address:
        yield address


@pytest.mark.slow
def test_trials_spread_over_two_nodes(two_node_cluster, data_dir, tmp_path):
    run_ = sweep("vae", "--address", two_node_cluster, "--data-dir", str(data_dir),
                 "--storage-path", str(tmp_path), "--name", "spread", "--num-samples", "4",
                 "--scheduler", "fifo", *TINY, env=CLUSTER_ENV, cwd=tmp_path)
    assert run_.returncode == 0, run_.stderr[-3000:]
    trials = trial_dirs(tmp_path / "spread")
    nodes = {placement(t)["node_id"] for t in trials}
    assert len(nodes) == 2
    for trial in trials:  # written on either node (the worker's /tmp/ray is its own), all here
        assert (trial / "samples" / "epoch_001.png").exists() and (trial / "status.json").exists()


@pytest.mark.slow
def test_fractional_gpus_pack_two_trials_and_fall_back_to_cpu(two_node_cluster, data_dir,
                                                               tmp_path):
    run_ = sweep("vae", "--address", two_node_cluster, "--data-dir", str(data_dir),
                 "--storage-path", str(tmp_path), "--name", "gpus", "--num-samples", "2",
                 "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--epochs", "12",
                 # trials long enough (~20 s) to outlast the second worker's start-up (~10 s): they overlap
                 # 1800: the test data's 2000 training images less the 10% validation split
                 "--train-subset", "1800", "--batch-size", "64", "--scheduler", "fifo",
                 "--fuse", "1",  # unfused trials (a VAE sweep on GPUs fuses 16 by default)
                 env=CLUSTER_ENV, cwd=tmp_path)
    assert run_.returncode == 0, run_.stderr[-3000:]
    trials = trial_dirs(tmp_path / "gpus")
    places = [placement(t) for t in trials]
    assert all(p["gpu_ids"] == ["0"] for p in places)  # both trials share the one logical GPU
    assert all(p["device"] == "cpu" for p in places)  # no CUDA here: each fell back to the CPU
    starts = [p["started_at"] for p in places]
    ends = [json.loads((t / "status.json").read_text())["ended_at"] for t in trials]
    assert max(starts) < min(ends), "the two trials did not overlap in time"


def test_trials_draw_their_end_of_run_figures_at_tunes_asha_rungs():
    """A trial draws its end-of-run figures at each epoch where ASHA may stop it (the scheduler
    stops a trial inside its report, too late to draw): exactly Tune's own ASHAScheduler's rungs
    before the last epoch."""
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.modes import ASHA_REDUCTION
    from trainables.rungs import rung_epochs

    for grace, epochs in [(1, 1), (1, 2), (1, 8), (1, 10), (3, 3), (2, 100), (10, 100)]:
        scheduler = ASHAScheduler(max_t=epochs, grace_period=grace, reduction_factor=ASHA_REDUCTION)
        (bracket,) = scheduler._brackets
        assert rung_epochs(grace, ASHA_REDUCTION, epochs) == {m for m, _ in bracket._rungs
                                                              if m < epochs}
    assert rung_epochs(1, 2, 10) == {1, 2, 4, 8}


BAD_OPTIONS = [
    (["--space", "SPACE", "--print-space"], "must be below"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--val-fraction", "1"], "--val-fraction is the share"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial"),
    (["--data-dir", "MISSING"], "train-images-idx3-ubyte"),
]


def bad_command(args: list[str], data_dir: Path, tmp_path: Path) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.01, high: 0.001}\n")
    args = [str(space) if a == "SPACE" else str(tmp_path / "nowhere") if a == "MISSING" else a
            for a in args]
    data = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
    return [*args, *data, "--storage-path", str(tmp_path)]


@pytest.mark.parametrize("args, message", BAD_OPTIONS)
def test_bad_options_are_clear_errors(args, message, data_dir, tmp_path, capsys):
    assert run("vae", bad_command(args, data_dir, tmp_path)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # a fresh Python that imports torch: seconds
def test_bad_options_fail_before_ray_is_imported(data_dir, tmp_path):
    """Every check runs before Ray: a fresh interpreter that ran all the bad commands never
    imported it (so never started it)."""
    commands = [bad_command(args, data_dir, tmp_path) for args, _ in BAD_OPTIONS]
    script = ("import json, sys; from sweeps.runner import EXIT_INTERRUPTED, run; "
              f"codes = [run('vae', c) for c in {commands!r}]; "
              "print(json.dumps({'codes': codes, 'ray': 'ray' in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome == {"codes": [2] * len(BAD_OPTIONS), "ray": False}


def test_a_gan_sweeps_classifier_epochs_must_be_positive(data_dir, tmp_path, capsys):
    assert run("gan", bad_command(["--classifier-epochs", "0"], data_dir, tmp_path)) == 2
    assert "--classifier-epochs must be a positive integer, got 0" in capsys.readouterr().err


def test_dropout_of_one_in_the_space_is_the_models_error(data_dir, tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"dropout": {"low": 0.5, "high": 1.0}}))
    assert run("gan", ["--space", str(space), "--data-dir", str(data_dir)]) == 2
    assert "dropout" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--gpus-per-trial", "0.5"], "has none"),
    (["--cpus-per-trial", "64"], "more than any node has"),
])
def test_impossible_resource_requests_fail_at_once(args, message, data_dir, tmp_path):
    run_ = sweep("vae", "--data-dir", str(data_dir), "--storage-path", str(tmp_path), *args,
                 cwd=tmp_path)
    assert run_.returncode == 2 and message in run_.stderr
    started = tmp_path / "vae-sweep"  # only Ray's log of its start is there: no sweep began
    assert not list(started.glob("train_trial_*")) and not (started / "gensweep_options.json").exists()


def test_download_is_tried_before_ray_and_its_failure_is_clear(tmp_path, capsys, monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    # The real torchvision class, with its download step failing as it does offline.
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    assert run("vae", ["--download", "--data-dir", str(tmp_path / "fresh")]) == 2
    err = capsys.readouterr().err
    assert "downloading it failed" in err and "network is unreachable" in err
