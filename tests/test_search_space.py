"""The search spaces, their override files, the strict config building and the option parsing of the
sweeps: everything checked before Ray starts (no Ray here, so these run in seconds).

    pytest tests/test_search_space.py -q
"""

import json

import numpy as np
import optuna
import pytest

from sweeps import search_space as spaces
from sweeps.options import SweepError, fixed_model_values, parse_options
from sweeps.runner import run
from sweeps.study import optuna_distribution
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
    distributions = {name: optuna_distribution(r) for name, r in space.items()}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fixed = fixed_model_values(model, space)
    for _ in range(SAMPLES):
        config = study.ask(distributions).params
        cfg = model_config_from_tune(model, {**fixed, **config})
        for name, r in space.items():
            assert r.low <= getattr(cfg, name) <= r.high


def test_integer_ranges_include_both_ends():
    distribution = {"x": optuna_distribution(spaces.Range(2, 4, integer=True))}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = {study.ask(distribution).params["x"] for _ in range(SAMPLES)}
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


def test_a_gan_sweep_on_gpus_trains_long_enough_to_reach_is_9():
    """docs/benchmarks.md: the seed's GAN reached IS 9 at epoch 100 on an H200; on GPUs that is the
    default budget, with ASHA's first rung at epoch 10; CPU sweeps and VAE sweeps keep 10 and 1."""
    gpu = parse_options("gan", ["--gpus-per-trial", "0.5"])
    assert (gpu.epochs, gpu.grace_period) == (100, 10)
    assert (parse_options("gan", []).epochs, parse_options("gan", []).grace_period) == (10, 1)
    vae_gpu = parse_options("vae", ["--gpus-per-trial", "1"])
    assert (vae_gpu.epochs, vae_gpu.grace_period) == (10, 1)
    assert parse_options("gan", ["--gpus-per-trial", "1", "--epochs", "5"]).grace_period == 5
    assert parse_options("gan", ["--gpus-per-trial", "1", "--smoke"]).epochs == 2


def test_a_trial_asks_for_one_gpu_at_most():
    """A trial trains on one device; two GPUs per trial would keep one reserved and idle."""
    assert parse_options("gan", ["--gpus-per-trial", "1"]).gpus_per_trial == 1
    with pytest.raises(SweepError, match="trains on one GPU.*--fuse K"):
        parse_options("gan", ["--gpus-per-trial", "2"])


# ---- the default configuration first, TPE's start-up sized to the budget (issue 11) -------------

@pytest.mark.parametrize("model", ["vae", "gan"])
def test_the_seed_defaults_are_the_model_configs_defaults(model):
    import dataclasses

    from genmodels.tasks import TASKS

    cfg_class, _ = TASKS[model]
    defaults = {f.name: f.default for f in dataclasses.fields(cfg_class)}
    assert spaces.SEED_DEFAULTS[model] == {name: defaults[name] for name in spaces.SPACES[model]}


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_each_default_sits_in_the_dense_middle_of_its_range(model):
    """Within the middle 60% of each range (in log space for log ranges), but for a default at the
    lowest value its config allows (the GAN's dropout 0): there the range starts at it."""
    point = spaces.default_point(model, spaces.search_space(model))
    assert point is not None and set(point) == set(spaces.SPACES[model])
    for name, r in spaces.SPACES[model].items():
        value = point[name]
        assert isinstance(value, int) == r.integer
        if value == 0:
            assert r.low == 0
            continue
        scale = np.log if r.log else (lambda v: v)
        position = (scale(value) - scale(r.low)) / (scale(r.high) - scale(r.low))
        assert 0.2 <= position <= 0.8, (name, position)


def test_a_default_outside_an_overridden_range_is_skipped_and_said_why():
    space = spaces.search_space("vae", {"dropout": {"low": 0.2, "high": 0.4}})
    assert spaces.default_point("vae", space) is None
    assert spaces.outside_space("vae", space) == ["dropout 0.1 is outside [0.2, 0.4]"]


def test_the_default_trial_is_recognised_from_a_config_or_a_table_row():
    import pandas as pd

    point = spaces.default_point("vae", spaces.search_space("vae"))
    assert spaces.is_default_config(point, "vae")
    row = pd.Series({"trial_id": "a", "config/dropout": 0.1, "config/latent_dim": 20,
                     "config/lr": float("0.001")})  # as MLflow's text params read back
    assert spaces.is_default_config(row, "vae")
    assert not spaces.is_default_config({**point, "lr": 1.1e-3}, "vae")
    assert not spaces.is_default_config({"dropout": 0.1, "lr": 1e-3}, "vae")  # latent_dim missing
    assert not spaces.is_default_config(row.replace(20, pd.NA), "vae")


@pytest.mark.parametrize("num_samples, startup", [(1, 2), (4, 2), (8, 2), (12, 3), (16, 4),
                                                  (40, 10), (200, 10)])
def test_tpe_random_start_up_is_a_quarter_of_the_budget_within_bounds(num_samples, startup):
    assert spaces.startup_trials(num_samples) == startup


@pytest.mark.parametrize("kwargs, split", [
    (dict(num_samples=16, default_first=True, startup=4), (1, 3, 12)),  # one at a time
    (dict(num_samples=16, default_first=False, startup=4), (0, 4, 12)),
    (dict(num_samples=16, default_first=True, startup=4, at_once=2), (1, 4, 11)),
    (dict(num_samples=16, default_first=True, startup=4, group_size=16), (1, 15, 0)),  # one group
    (dict(num_samples=40, default_first=True, startup=10, group_size=16), (1, 15, 24)),
    (dict(num_samples=3, default_first=True, startup=10), (1, 2, 0)),
])
def test_the_budget_split_follows_tpes_start_up(kwargs, split):
    got = spaces.budget_split(**kwargs)
    assert (got.default, got.random, got.guided) == split
    assert got.default + got.random + got.guided == kwargs["num_samples"]


def test_the_setup_line_says_how_the_budget_is_searched(tmp_path):
    from sweeps.console import search_line
    from sweeps.options import given_options
    from sweeps.runner import prepare

    def line(argv):
        argv = [*argv, "--storage-path", str(tmp_path)]
        return search_line(prepare("vae", parse_options("vae", argv), given_options("vae", argv)))

    assert line(["--max-concurrent", "1"]) == (
        "Optuna TPE (seed 0): trial 1 the default, 3 random start-up, 12 guided (random until 4 "
        "configurations have ended; 1 trial at once).")
    # never more at once than the sweep's configurations fill (here one group, of 2, not of 4)
    assert line(["--fuse", "4", "--num-samples", "2"]).endswith(
        "(random until 2 configurations have ended; 1 group of 2 at once).")
    assert line(["--max-concurrent", "1", "--no-default-first"]).startswith(
        "Optuna TPE (seed 0): 4 random start-up, 12 guided")
    moved = tmp_path / "space.yaml"
    moved.write_text("lr: {low: 2.0e-3, high: 5.0e-3}\n")
    assert line(["--space", str(moved)]).endswith(
        "The default configuration is not run first: lr 0.001 is outside [0.002, 0.005] of the "
        "search space.")


def test_the_fused_study_asks_the_default_first_and_sizes_its_start_up():
    from sweeps.study import MemberStudy

    space = spaces.search_space("vae")
    study = MemberStudy(space, num_configs=4, metric="test_elbo", mode="max", seed=0,
                        first=spaces.default_point("vae", space), startup=2)
    first, second = study.ask("t0", 2).values()
    assert first == spaces.default_point("vae", space)
    assert not spaces.is_default_config(second, "vae")
    assert study.study.sampler._n_startup_trials == 2
