"""Optuna for fused sweeps: K configurations per Tune trial, each its own Optuna trial.

With `--fuse K` one Tune trial trains a fused group (`trainables/fused_trainable.py`). This searcher
asks Optuna for K configurations at once (TPE with `constant_liar=True`, so configurations asked
before any result is in are kept apart instead of clustering), hands them to Tune as one trial's
config, and tells Optuna each member's own result when its group reports and ends:

- every epoch, each member's objective as an intermediate value (Optuna's `trial.report`);
- at the end, COMPLETE with the member's last objective, PRUNED for a member stopped early, FAIL
  for a member that diverged or whose group failed.

`--num-samples` counts configurations: the searcher hands out exactly that many, the last group
holding the remainder.
"""

from __future__ import annotations

import pickle

import optuna
from ray.tune.search import Searcher

from genmodels.names import FAILED, FINISHED, MEMBERS_KEY, RUNNING, STOPPED_EARLY
from genmodels.names import MEMBER_IDS_KEY as IDS_KEY
from genmodels.names import MEMBER_RESULTS_KEY as RESULTS_KEY
from sweeps.search_space import Range


def optuna_distribution(r: Range) -> optuna.distributions.BaseDistribution:
    if r.integer:
        return optuna.distributions.IntDistribution(int(r.low), int(r.high), log=r.log)
    return optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)


class FusedOptunaSearch(Searcher):
    def __init__(self, space: dict[str, Range], group_size: int, num_configs: int, metric: str,
                 mode: str, seed: int, first: dict | None = None, startup: int = 10):
        super().__init__(metric=metric, mode=mode)
        self.distributions = {name: optuna_distribution(r) for name, r in space.items()}
        self.group_size, self.num_configs = group_size, num_configs
        # startup: TPE samples at random until this many configurations have ended
        # (sweeps/search_space.py, startup_trials); 10 is Optuna's own default.
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
        direction = "maximize" if mode == "max" else "minimize"
        self.study = optuna.create_study(sampler=sampler, direction=direction)
        if first:  # e.g. the model's default configuration, evaluated in the first group
            self.study.enqueue_trial(first)
        self.asked = 0
        self.groups: dict[str, list[optuna.trial.Trial]] = {}  # Tune trial id -> its members
        self.told: set[int] = set()  # Optuna trial numbers already told

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and the objective are this searcher's own (set in __init__)

    def suggest(self, trial_id: str):
        if self.asked >= self.num_configs:
            return Searcher.FINISHED
        size = min(self.group_size, self.num_configs - self.asked)
        members = [self.study.ask(self.distributions) for _ in range(size)]
        self.asked += size
        self.groups[trial_id] = members
        return {MEMBERS_KEY: [dict(t.params) for t in members],
                IDS_KEY: [member_id(t.number) for t in members]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for trial, member in self._members(trial_id, result):
            if trial.number in self.told:
                continue
            value = member.get(self.metric)
            if value is not None and member.get("status") == RUNNING:
                trial.report(value, member["epoch"])
            elif member.get("status") != RUNNING:  # ended in this epoch: tell Optuna now
                self._tell(trial, member)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        for trial, member in self._members(trial_id, result or {}):
            if trial.number not in self.told:
                self._tell(trial, member)
        for trial in self.groups.get(trial_id, []):  # members that never reported an end
            if trial.number not in self.told:
                self._tell(trial, {"status": FAILED})

    def _tell(self, trial: optuna.trial.Trial, member: dict) -> None:
        value, status = member.get(self.metric), member.get("status")
        if status == FINISHED and value is not None:
            self.study.tell(trial, value)
        elif status == STOPPED_EARLY:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:  # diverged, failed, or its group failed before this member ended
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.told.add(trial.number)

    def _members(self, trial_id: str, result: dict):
        results = result.get(RESULTS_KEY) or {}
        for trial in self.groups.get(trial_id, []):
            member = results.get(member_id(trial.number))
            if member is not None:
                yield trial, member

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def member_id(number: int) -> str:
    """A member's name: its Optuna trial number, so names are unique within a sweep."""
    return f"m{number:03d}"
