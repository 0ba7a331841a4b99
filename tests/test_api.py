"""Sweeps from Python (`from sweeps import run_sweep`), as a notebook runs them.

    pytest tests/test_api.py -q
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweeps.api import command_line

REPO = Path(__file__).resolve().parent.parent
TINY = dict(num_samples=2, epochs=1, train_subset=256, batch_size=64, scheduler="fifo")


def test_the_options_are_the_command_lines_read_from_its_parser():
    assert command_line("vae", dict(num_samples=4, smoke=True, data_dir="data", fuse=None)) == [
        "--num-samples", "4", "--smoke", "--data-dir", "data"]  # None: the option's default
    assert command_line("vae", dict(refill=False)) == command_line("vae", dict(no_refill=True)) == [
        "--no-refill"]
    assert command_line("gan", dict(eval_samples=500, resume=False)) == ["--eval-samples", "500"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nm_samples'.*num_samples"):
        command_line("vae", dict(nm_samples=3))
    with pytest.raises(TypeError, match="'eval_samples'"):  # a GAN's option, not the VAE's
        command_line("vae", dict(eval_samples=500))
    with pytest.raises(ValueError, match="--smoke is a switch"):
        command_line("vae", dict(smoke="yes"))
    with pytest.raises(ValueError, match="model must be one of"):
        command_line("dcgan", {})


@pytest.mark.slow
def test_bad_values_are_the_command_lines_errors_raised_before_ray_starts(tmp_path):
    script = (
        "import sys\n"
        "from sweeps import run_sweep\n"
        "for options in (dict(num_samples=0), dict(epochs='x'), dict(data_dir='nowhere')):\n"
        "    try:\n"
        "        run_sweep('vae', **options)\n"
        "    except ValueError as err:\n"
        "        print(err)\n"
        "assert 'ray' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # (a sweep whose options are good prints its search space before it reads the data)
    errors = [line for line in run.stdout.splitlines()
              if not line.startswith((" ", "search space"))]
    assert errors[0] == "--num-samples must be a positive integer, got 0"
    assert errors[1] == "argument --epochs: invalid int value: 'x' (see --help)"
    assert errors[2].startswith("mnist is not in") and "nowhere" in errors[2]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_two_sweeps_in_one_process_then_a_resume_return_ranked_sweeps(data_dir, tmp_path,
                                                                       monkeypatch):
    from sweeps import run_sweep

    monkeypatch.chdir(tmp_path)  # the local MLflow store, mlflow.db, goes here
    common = dict(data_dir=str(data_dir), storage_path=str(tmp_path), **TINY)
    plain = run_sweep("vae", name="plain", test_top=1, **common)
    assert len(plain.trials) == 2 and list(plain.trials["rank"]) == [1, 2]  # ranked best first
    assert plain.best["trial_id"] == plain.trials["trial_id"].iloc[0]
    assert plain.trials["val_elbo"].iloc[0] >= plain.trials["val_elbo"].iloc[1]
    assert plain.history["trial_id"].nunique() == 2
    vae = plain.load_model()  # the best trial's network, from its checkpoint
    assert vae.sample(torch.randn(4, vae.latent_dim)).shape == (4, 1, 28, 28)
    other = plain.load_model(plain.trials["trial_id"].iloc[1])
    assert other.latent_dim == plain.trials["config/latent_dim"].iloc[1]

    fused = run_sweep("vae", name="fused", fuse=2, test_top=0, **common)  # a second Ray, in turn
    assert len(fused.trials) == 2 and set(fused.trials["status"]) == {"finished"}
    assert fused.load_model().latent_dim == fused.best["config/latent_dim"]  # a member's export

    again = run_sweep("vae", name="plain", storage_path=str(tmp_path), resume=True)
    assert again.trials["trial_id"].tolist() == plain.trials["trial_id"].tolist()
    with pytest.raises(ValueError, match="already exists"):
        run_sweep("vae", name="plain", **common)
