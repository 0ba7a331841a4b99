"""`python -m genmodels.train` end to end in a temporary folder, as a user runs it (slow), and its
checks of bad input, called in-process (quick).

    pytest tests/test_cli.py -q
"""

import json
import os
import subprocess
import sys

import pytest

from genmodels.train import main

VAE_KEYS = {"epoch", "train_loss", "val_elbo", "val_recon", "val_kl"}
GAN_KEYS = {"epoch", "loss_d", "loss_g", "d_real", "d_fake"}
QUICK = ["--train-subset", "256", "--batch-size", "64", "--num-threads", "1", "--no-progress"]


SCORE_KEYS = {"val_inception_score", "val_inception_score_std", "val_fcd", "val_precision",
              "val_recall"}


def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genmodels.train", *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_vae_cli_writes_metrics_figures_and_resumes(data_dir, tmp_path):
    out = tmp_path / "vae"
    run = train("vae", "--data-dir", str(data_dir), "--epochs", "2", "--out", str(out),
                "--dropout", "0.2", "--latent-dim", "8", "--iwae-samples", "5", *QUICK)
    assert run.returncode == 0, run.stderr
    assert "VAEConfig(latent_dim=8" in run.stdout  # the config is printed at the start
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(VAE_KEYS <= set(m) for m in metrics)
    # The test split once, after training; never an epoch's number.
    assert not any(k.startswith("test_") for m in metrics for k in m)
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["epoch"] == 2 and test["test_iwae"] >= test["test_elbo"] - 1
    assert "test_elbo" in run.stdout
    for name in ("samples/epoch_001.png", "samples/epoch_002.png", "samples_across_epochs.png",
                 "real_vs_reconstructed.png", "checkpoint.pt", "config.json", "test_metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "status.json").read_text())["status"] == "finished"

    again = train("vae", "--data-dir", str(data_dir), "--epochs", "3", "--out", str(out),
                  "--resume", *QUICK)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch 2" in again.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["model_config"]["latent_dim"] == 8


@pytest.mark.slow
def test_gan_cli_writes_scores_metrics_and_figures(data_dir, tmp_path):
    out = tmp_path / "gan"
    env = {**os.environ, "GENSWEEP_CACHE_DIR": str(tmp_path / "cache")}
    run = train("gan", "--data-dir", str(data_dir), "--epochs", "2", "--out", str(out),
                "--latent-dim", "32", "--lr-g", "3e-4", "--lr-d", "1e-4", "--eval-samples", "200",
                "--eval-every", "2", "--test-samples", "200", "--classifier-epochs", "1", *QUICK, env=env)
    assert run.returncode == 0, run.stderr
    assert "training the scoring classifier" in run.stdout
    first, last = json.loads((out / "metrics.json").read_text())
    assert GAN_KEYS <= set(first) and not SCORE_KEYS & set(first)  # scored every 2nd epoch
    assert GAN_KEYS | SCORE_KEYS <= set(last)
    assert 1.0 <= last["val_inception_score"] <= 10.0 and last["val_fcd"] > 0
    test = json.loads((out / "test_metrics.json").read_text())
    assert {"test_fcd", "test_inception_score", "test_precision", "test_recall"} <= set(test)
    assert (out / "real_vs_generated.png").stat().st_size > 0
    assert (out / "samples_across_epochs.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["vae", "--dropout", "1.0"], "dropout"),
    (["gan", "--lr-d", "-0.1"], "lr_d"),
    (["gan", "--classifier-epochs", "0"], "--classifier-epochs must be a positive integer"),
    (["vae", "--epochs", "0"], "epochs must be a positive integer"),
])
def test_cli_rejects_bad_options(args, message, data_dir, tmp_path, capsys):
    assert main([*args, "--data-dir", str(data_dir), "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a run that never started


def test_cli_reports_missing_data(tmp_path, capsys):
    assert main(["vae", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "MNIST" in err and "train-images-idx3-ubyte" in err


def test_resume_without_a_checkpoint_is_a_clear_error(data_dir, tmp_path, capsys):
    assert main(["vae", "--data-dir", str(data_dir), "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_boolean_options_turn_on_and_off(tmp_path):
    """CUDA graphs are on by default (a no-op on the CPU); --no-cuda-graphs turns them off, and
    --channels-last / --no-channels-last work the same way."""
    from genmodels.train import build_parser, configs_from_args

    def train_cfg(*flags):
        args = build_parser().parse_args(["vae", *flags])
        return configs_from_args(args, tmp_path)[1]

    assert train_cfg().cuda_graphs and not train_cfg().channels_last
    assert not train_cfg("--no-cuda-graphs").cuda_graphs
    assert train_cfg("--channels-last").channels_last
