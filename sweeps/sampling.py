"""How each configuration of a sweep was chosen, read from its Optuna study when the sweep ends.

TPE samples at random until `n_startup_trials` trials have ended (COMPLETE or PRUNED), and from
its model of those that had ended after that. A trial's study records when it was asked
(`datetime_start`) and when each trial ended (`datetime_complete`), so which of the two chose a
configuration is a count, not an estimate: it depends on how many had ended when it was asked,
which trials running side by side, fused groups and refills all change. The sweep's first trial,
enqueued with the seed's default values, is the default.

The sweep writes the result (trial id -> one of SAMPLED_KINDS) to its folder (SAMPLED_FILE) and as
a tag on each trial's MLflow run (SAMPLED_TAG); `analysis.load_trials` reads it as the `sampled`
column and the report counts it.
"""

from __future__ import annotations

from bisect import bisect_right

import optuna

from genmodels.names import DEFAULT_SAMPLED, GUIDED_SAMPLED, RANDOM_SAMPLED

# What TPESampler counts toward its start-up (optuna/samplers/_tpe/sampler.py, n_startup_trials).
ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def how_sampled(study: optuna.Study, startup: int) -> dict[int, str]:
    """Optuna trial number -> default, random or guided, for every trial that was asked.
    `startup`: TPE's start-up count, the n_startup_trials its TPE sampler was made with.

    A configuration enqueued after the first one is left out: the fused study's adopted refills
    (`MemberStudy.adopt`) were sampled by a study state that a killed driver lost."""
    trials = study.get_trials(deepcopy=False)
    ended = sorted(t.datetime_complete for t in trials
                   if t.state in ENDED and t.datetime_complete is not None)
    kinds = {}
    for trial in trials:
        if trial.datetime_start is None:  # enqueued, never asked
            continue
        if "fixed_params" in trial.system_attrs:  # Optuna's mark of an enqueued trial
            if trial.number == 0:
                kinds[trial.number] = DEFAULT_SAMPLED
            continue
        ended_before = bisect_right(ended, trial.datetime_start)
        kinds[trial.number] = GUIDED_SAMPLED if ended_before >= startup else RANDOM_SAMPLED
    return kinds


def sampled_by_id(study: optuna.Study, trials: dict, startup: int) -> dict[str, str]:
    """`trials` (trial id -> its Optuna trial) -> how each was chosen, for those `how_sampled`
    knows."""
    kinds = how_sampled(study, startup)
    return {trial_id: kinds[trial.number] for trial_id, trial in trials.items()
            if trial.number in kinds}

