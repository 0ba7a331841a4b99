"""The search spaces, their override files, the strict config building and the option parsing of the
sweeps: everything checked before Ray starts (no Ray here, so these run in seconds).

    pytest tests/test_search_space.py -q
"""

import json

import numpy as np
import pytest

from sweeps import search_space as spaces
from sweeps.runner import SweepError, fixed_model_values, parse_options, run
from sweeps.tuner import to_tune, tune_distribution
from trainables.trainable import model_config_from_tune

SAMPLES = 200


@pytest.mark.parametrize("model, names", [
    ("vae", ["dropout", "latent_dim", "lr"]),
    ("gan", ["dropout", "latent_dim", "lr_g", "lr_d"]),
])
def test_print_space_shows_every_range_and_needs_no_data(model, names, tmp_path, monkeypatch,
                                                         capsys):
    monkeypatch.chdir(tmp_path)
    assert run(model, ["--print-space", "--data-dir", str(tmp_path / "no-data-here")]) == 0
    out = capsys.readouterr().out
    assert "Optuna TPE" in out
    for name in names:
        assert name in out
    assert "log" in out  # learning rates and latent sizes are searched on a log scale
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_every_sample_of_the_default_space_builds_a_valid_config(model):
    space = spaces.search_space(model)
    domains = to_tune(space)
    rng = np.random.default_rng(0)
    fixed = fixed_model_values(model, space)
    for _ in range(SAMPLES):
        config = {name: domain.sample(random_state=rng) for name, domain in domains.items()}
        cfg = model_config_from_tune(model, {**fixed, **config})
        for name, r in space.items():
            assert r.low <= getattr(cfg, name) <= r.high


def test_integer_ranges_include_both_ends():
    domain = tune_distribution(spaces.Range(2, 4, integer=True))
    values = set(domain.sample(size=SAMPLES, random_state=np.random.default_rng(0)))
    assert values == {2, 3, 4}


def test_an_override_file_changes_only_the_fields_it_names(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr_g: {low: 1.0e-4, high: 5.0e-4}\nlatent_dim: {low: 32, high: 64}\n")
    space = spaces.search_space("gan", spaces.load_overrides(path))
    assert (space["lr_g"].low, space["lr_g"].high, space["lr_g"].log) == (1e-4, 5e-4, True)
    assert (space["latent_dim"].low, space["latent_dim"].high) == (32, 64)
    assert space["latent_dim"].integer
    assert space["lr_d"] == spaces.SPACES["gan"]["lr_d"]


@pytest.mark.parametrize("overrides, message", [
    ({"lr": {"low": 0.01, "high": 0.001}}, "must be below"),
    ({"lr": {"low": 0.0, "high": 0.001}}, "log-scale range needs low > 0"),
    ({"dropout": {"low": 0.5, "high": 1.0}}, "dropout"),
    ({"latent_dim": {"low": 0, "high": 8, "log": False}}, "latent_dim"),
    ({"learning_rate": {"low": 0.001, "high": 0.01}}, "unknown hyperparameter 'learning_rate'"),
    ({"lr": {"min": 0.001}}, "unknown fields ['min']"),
])
def test_bad_ranges_are_clear_errors(overrides, message):
    with pytest.raises(ValueError) as err:
        spaces.search_space("vae", overrides)
    assert message in str(err.value)


def test_an_override_file_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="mapping of hyperparameter"):
        spaces.load_overrides(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spaces.load_overrides(tmp_path / "missing.yaml")


def test_a_trials_config_is_built_strictly():
    fixed = fixed_model_values("gan", spaces.SPACES["gan"])
    sampled = {"dropout": 0.1, "latent_dim": 32, "lr_g": 1e-4, "lr_d": 2e-4}
    cfg = model_config_from_tune("gan", {**fixed, **sampled})
    assert (cfg.lr_g, cfg.lr_d, cfg.latent_dim) == (1e-4, 2e-4, 32)
    with pytest.raises(ValueError, match=r"unknown keys \['netG_lr'\]"):
        model_config_from_tune("gan", {**fixed, **sampled, "netG_lr": 1e-3})
    with pytest.raises(ValueError, match=r"missing keys \['lr_d'\]"):
        model_config_from_tune("gan", {**fixed, **{k: v for k, v in sampled.items() if k != "lr_d"}})


def test_smoke_fills_only_the_options_left_at_their_defaults():
    args = parse_options("gan", ["--smoke", "--epochs", "3"])
    assert args.epochs == 3  # the user's own value wins
    assert (args.num_samples, args.train_subset, args.eval_samples) == (4, 512, 500)
    assert parse_options("vae", ["--smoke"]).iwae_samples == 5


@pytest.mark.parametrize("argv, message", [
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--num-samples", "0"], "--num-samples"),
    (["--max-concurrent", "0"], "--max-concurrent"),
    (["--epochs", "3", "--grace-period", "4"], "--grace-period"),
])
def test_bad_options_are_clear_errors(argv, message):
    with pytest.raises(SweepError, match=message):
        parse_options("vae", argv)


def test_whole_gpus_are_allowed():
    assert parse_options("gan", ["--gpus-per-trial", "2"]).gpus_per_trial == 2
