"""Bad input is refused in seconds, before Ray starts, with a one-line `error: ...` and exit code 2,
and nothing written: no sweep folder, no gensweep_options.json, no MLflow store or experiment.

    pytest tests/test_bad_input.py -q
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sweeps.runner import EXIT_BAD_INPUT, run

REPO = Path(__file__).resolve().parent.parent
FAST_SECONDS = 60  # loose: "seconds, not the minutes a Ray start and a trial would take"
TRAIN_IMAGES = "MNIST/raw/train-images-idx3-ubyte"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_data(data_dir: Path, to: Path) -> Path:
    shutil.copytree(data_dir / "MNIST", to / "MNIST")
    return to


def empty_file(data: Path) -> None:
    (data / TRAIN_IMAGES).write_bytes(b"")


def truncated_file(data: Path) -> None:
    path = data / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncated_gzip(data: Path) -> None:
    (data / TRAIN_IMAGES).unlink()
    packed = data / f"{TRAIN_IMAGES}.gz"
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])


def missing_file(data: Path) -> None:
    (data / TRAIN_IMAGES).unlink()
    (data / f"{TRAIN_IMAGES}.gz").unlink()


# (case id, extra options, how to spoil a copy of the data or None, what the message says)
CASES = [
    ("unknown-dataset", ["--dataset", "cifar"], None, "invalid choice: 'cifar'"),
    ("unknown-option", ["--no-such-option", "3"], None, "unrecognized arguments"),
    ("missing-file", [], missing_file, "missing train-images-idx3-ubyte"),
    ("empty-file", [], empty_file, "could not read the train split"),
    ("truncated-file", [], truncated_file, "could not read the train split"),
    ("truncated-gzip", [], truncated_gzip, "is corrupt"),
    ("empty-folder", ["--data-dir", "EMPTY"], None, "is not in"),
    ("data-dir-is-a-file", ["--data-dir", "FILE"], None, "is a file, not a folder"),
    ("space-bad-yaml", ["--space", "BAD_YAML"], None, "is not valid YAML at line"),
    ("space-low-above-high", ["--space", "LOW_HIGH"], None, "must be below high"),
    ("space-unknown-name", ["--space", "UNKNOWN"], None, "unknown hyperparameter 'lr_g'"),
    ("num-samples-0", ["--num-samples", "0"], None, "--num-samples must be a positive integer, got 0"),
    ("epochs-0", ["--epochs", "0"], None, "--epochs must be a positive integer, got 0"),
    ("epochs-negative", ["--epochs", "-1"], None, "--epochs must be a positive integer, got -1"),
    ("batch-size-0", ["--batch-size", "0"], None, "--batch-size must be a positive integer, got 0"),
    ("batch-above-data", ["--batch-size", "512", "--train-subset", "256"], None,
     "--batch-size 512 is larger than the 256 training images"),
    ("subset-above-data", ["--train-subset", "100000"], None, "--train-subset 100000 is more"),
    ("gpus-2.5", ["--gpus-per-trial", "2.5"], None, "--gpus-per-trial must be in [0, 1], got 2.5"),
    ("gpus-none-here", ["--gpus-per-trial", "0.5"], None, "machine has none"),
    ("mlflow-unreachable", ["--mlflow-uri", "UNREACHABLE"], None, "does not answer"),
    ("resume-no-such-sweep", ["--resume", "--name", "never-ran"], None, "no sweep 'never-ran'"),
    ("name-with-slash", ["--name", "a/b"], None, "--name must be a plain folder name"),
    ("name-dotdot", ["--name", ".."], None, "--name must be a plain folder name"),
    ("name-escapes", ["--name", "../../x"], None, "--name must be a plain folder name"),
]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("options, spoil, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_early_and_writes_nothing(options, spoil, message, data_dir, tmp_path,
                                                        monkeypatch, capsys):
    import ray

    if "machine has none" in message and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = data_dir
    if spoil is not None:
        data = copy_data(data_dir, tmp_path / "data")
        spoil(data)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    spaces = {"BAD_YAML": "lr: {low: 0.001, high: 0.01\n  latent_dim: [\n",
              "LOW_HIGH": "lr: {low: 0.01, high: 0.001}\n", "UNKNOWN": "lr_g: {low: 0.1, high: 0.2}\n"}
    for key, text in spaces.items():
        (tmp_path / f"{key}.yaml").write_text(text)
    replace = {"EMPTY": str(tmp_path / "empty"), "FILE": str(tmp_path / "a-file"),
               "UNREACHABLE": f"http://127.0.0.1:{free_port()}",
               **{k: str(tmp_path / f"{k}.yaml") for k in spaces}}
    options = [replace.get(o, o) for o in options]
    if "--data-dir" not in options:
        options += ["--data-dir", str(data)]
    if "--mlflow-uri" not in options:
        options += ["--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    work = tmp_path / "work"  # the working folder: MLflow's default store would land here
    work.mkdir()
    monkeypatch.chdir(work)
    before = files_under(tmp_path) - files_under(tmp_path / "data")

    start = time.time()
    code = run("vae", ["--epochs", "1", *options, "--storage-path", str(tmp_path / "sweeps")])
    elapsed = time.time() - start

    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert elapsed < FAST_SECONDS
    assert not ray.is_initialized()  # refused before Ray started
    after = files_under(tmp_path) - files_under(tmp_path / "data")
    assert after == before, f"written: {sorted(map(str, after - before))}"  # no folder, no db


@pytest.mark.slow  # a fresh Python that imports torch: seconds
def test_the_script_prints_one_line_and_exits_2(tmp_path):
    """As a user sees it: the script's own exit code and stderr, nothing else on stderr."""
    result = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "vae_sweep.py"), "--epochs", "-1",
         "--storage-path", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr.strip() == "error: --epochs must be a positive integer, got -1"
    assert list(tmp_path.iterdir()) == []
