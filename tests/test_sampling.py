"""How each configuration was chosen (sweeps/sampling.py), counted from real Optuna studies: the
sweep's own study (`MemberStudy`, as an unfused sweep's searcher feeds it), and a plain one."""

from __future__ import annotations

import optuna
from optuna.samplers import TPESampler

from sweeps.sampling import how_sampled
from sweeps.search_space import Range
from sweeps.study import MemberStudy


def test_an_unfused_sweeps_trials_are_default_then_random_until_startup_have_ended_then_guided():
    def study(startup):
        study = MemberStudy({"lr": Range(1e-4, 1e-2, log=True)}, num_configs=5, metric="val_elbo",
                            mode="max", seed=0, first={"lr": 1e-3}, startup=startup, fused=False)
        assert study.ask("a", 1) == {"m000": {"lr": 1e-3}}  # the default, enqueued
        study.ask("b", 1)
        study.ask("c", 1)  # asked with none ended: random, whatever ends later
        study.report_trial("a", {"val_elbo": -151.0, "epoch": 1})
        study.report_trial("a", {"val_elbo": -150.0, "epoch": 2}, ended=True)
        study.report_trial("b", {}, ended=True)  # no value: stopped before reporting (PRUNED), still ended
        study.ask("d", 1)  # two had ended: TPE's guess
        study.report_trial("c", {}, ended=True, error=True)  # FAIL: does not count
        study.report_trial("d", {"val_elbo": float("nan")}, ended=True)  # diverged: FAIL
        return study

    guided = study(startup=2)
    assert guided.sampled() == {"a": "default", "b": "random", "c": "random", "d": "guided"}
    states = [t.state for t in guided.study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                      optuna.trial.TrialState.FAIL, optuna.trial.TrialState.FAIL]
    assert guided.study.trials[0].value == -150.0 and guided.study.trials[0].intermediate_values == {
        1: -151.0}  # the last epoch reaches it as the end (Tune reports it as a result first)
    assert study(startup=3).sampled() == {"a": "default", "b": "random", "c": "random", "d": "random"}


def test_without_the_default_first_the_first_trial_is_random_and_a_later_enqueued_one_is_left_out():
    study = optuna.create_study(sampler=TPESampler(seed=0, n_startup_trials=1))
    first = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(first, 0.5)
    study.enqueue_trial({"x": 0.25})  # as MemberStudy.adopt does for a refill a lost state asked
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert how_sampled(study, startup=1) == {0: "random", 2: "guided"}
