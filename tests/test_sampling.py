"""How each configuration was chosen (sweeps/sampling.py), counted from real Optuna studies: the
one Ray Tune's OptunaSearch keeps for an unfused sweep, and a plain one."""

from __future__ import annotations

import optuna
from optuna.samplers import TPESampler
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sweeps.sampling import how_sampled, tune_search_sampled


def test_tunes_optuna_search_trials_are_default_then_random_until_startup_have_ended_then_guided():
    search = OptunaSearch(space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="val_elbo", mode="max",
                          sampler=TPESampler(seed=0, n_startup_trials=2),
                          points_to_evaluate=[{"lr": 1e-3}])
    assert search.suggest("a") == {"lr": 1e-3}  # the default, enqueued
    search.suggest("b")
    search.suggest("c")  # asked with none ended: random, whatever ends later
    search.on_trial_complete("a", {"val_elbo": -150.0})
    search.on_trial_complete("b", {})  # no value: stopped before reporting (PRUNED), still ended
    search.suggest("d")  # two had ended: TPE's guess
    search.on_trial_complete("c", None, error=True)  # FAIL: does not count
    assert tune_search_sampled(search, startup=2) == {
        "a": "default", "b": "random", "c": "random", "d": "guided"}
    assert tune_search_sampled(search, startup=3) == {
        "a": "default", "b": "random", "c": "random", "d": "random"}


def test_without_the_default_first_the_first_trial_is_random_and_a_later_enqueued_one_is_left_out():
    study = optuna.create_study(sampler=TPESampler(seed=0, n_startup_trials=1))
    first = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(first, 0.5)
    study.enqueue_trial({"x": 0.25})  # as MemberStudy.adopt does for a refill a lost state asked
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert how_sampled(study, startup=1) == {0: "random", 2: "guided"}
