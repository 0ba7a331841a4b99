"""The sweep's Optuna study, and Tune's searcher over it: one configuration per Tune trial, or K
per Tune trial (a fused group, `--fuse K`), each its own Optuna trial.

The study (`MemberStudy`) lives in a small Ray actor, named after the sweep, because in a fused
sweep two parties ask it for configurations:

- the searcher (`StudySearch`, in Tune's driver) asks for K at a time for each new group (for one
  per trial in an unfused sweep);
- a running group asks for one per member that ended (stopped early, diverged, finished), so its
  freed slots train fresh configurations instead of idling (`--refill`, the default);

both from TPE with `constant_liar=True`, so configurations asked before any result is in are kept
apart instead of clustering. Each configuration's results are told to its own Optuna trial as its
trial (or group) reports them:

- every epoch, its objective as an intermediate value (Optuna's `trial.report`);
- at the end, COMPLETE with its last objective, PRUNED when it ended without one (a fused member
  stopped early by the per-member ASHA; an unfused trial stopped before its first value), FAIL for
  one that diverged or failed. (An unfused trial that Tune's ASHA stopped is COMPLETE with its last
  value, as Tune's own OptunaSearch tells it.)

Because the study hands out every configuration, it also records how each was chosen (`sampled`):
the default, TPE's random start-up, or TPE's guess (sweeps/sampling.py). `--num-samples` counts
configurations: the study hands out exactly that many, to new groups and to refills alike.
"""

from __future__ import annotations

import math
import pickle

import optuna
import ray
from ray.tune.search import Searcher
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from genmodels.names import FAILED, FINISHED, MEMBER_RESULTS_KEY, RUNNING, STOPPED_EARLY
from sweeps.sampling import sampled_by_id
from sweeps.search_space import Range


def optuna_distribution(r: Range) -> optuna.distributions.BaseDistribution:
    if r.integer:
        return optuna.distributions.IntDistribution(int(r.low), int(r.high), log=r.log)
    return optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)


def member_id(number: int) -> str:
    """A member's name: its Optuna trial number when asked, so names are unique within a sweep."""
    return f"m{number:03d}"


def member_results(result: dict) -> dict[str, dict]:
    """A group's report as member id -> its latest values and status. Tune hands searchers its
    results flattened (`member_results/m003/val_elbo`: `flatten_dict`), so they are gathered back."""
    if MEMBER_RESULTS_KEY in result:
        return result[MEMBER_RESULTS_KEY] or {}
    members: dict[str, dict] = {}
    for key, value in result.items():
        head, _, rest = key.partition("/")
        if head == MEMBER_RESULTS_KEY and "/" in rest:
            member, _, name = rest.partition("/")
            members.setdefault(member, {})[name] = value
    return members


class MemberStudy:
    """The sweep's Optuna study and its budget of configurations; members are keyed by
    (group, member id), the group being its Tune trial id. `fused`: whether a Tune trial is a
    group of members (named '<group>-<member>' in the analysis) or one configuration (its trial id)."""

    def __init__(self, space: dict[str, Range], num_configs: int, metric: str, mode: str, seed: int,
                 first: dict | None = None, startup: int = 10, fused: bool = True):
        self.reset(space, num_configs, metric, mode, seed, first, startup, fused)

    def reset(self, space: dict[str, Range], num_configs: int, metric: str, mode: str, seed: int,
              first: dict | None = None, startup: int = 10, fused: bool = True) -> None:
        """A new study (what __init__ makes), for an actor that a sweep of this name had before."""
        self.distributions = {name: optuna_distribution(r) for name, r in space.items()}
        self.num_configs, self.metric, self.startup, self.fused = num_configs, metric, startup, fused
        # startup: TPE samples at random until this many configurations have ended
        # (sweeps/search_space.py, startup_trials); 10 is Optuna's own default.
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
        self.study = optuna.create_study(sampler=sampler,
                                         direction="maximize" if mode == "max" else "minimize")
        if first:  # e.g. the model's default configuration, evaluated in the first group
            self.study.enqueue_trial(first)
        self.asked = 0
        self.trials: dict[tuple[str, str], optuna.trial.Trial] = {}  # (group, member) -> its trial
        self.told: set[int] = set()  # Optuna trial numbers already told
        self.handed: dict[tuple[str, int], dict[str, dict]] = {}  # (group, epoch) -> what `ask` gave

    def left(self) -> int:
        """Configurations not yet handed out."""
        return self.num_configs - self.asked

    def handed_out(self) -> int:
        """Configurations handed out so far: to trials, groups and refills."""
        return self.asked

    def ask(self, group: str, count: int, epoch: int = 0,
            results: dict[str, dict] | None = None) -> dict[str, dict]:
        """Up to `count` new configurations for `group` after its `epoch` (0: a new group), member
        id -> values; fewer (or none) once the sweep's --num-samples are handed out. A group that
        asks again for the same epoch (retried from an earlier checkpoint after its worker died)
        gets the same configurations, not more. `results`: the group's report of that epoch
        (as `report` takes it), told first, so TPE samples the refills knowing how the members
        whose slots they take ended (the group's report reaches the searcher only after)."""
        if (group, epoch) in self.handed:
            return self.handed[(group, epoch)]
        if results:  # the members that ended (running ones report their epoch via the searcher)
            self.report(group, {m: r for m, r in results.items() if r.get("status", RUNNING) != RUNNING})
        asked = {}
        for _ in range(min(count, self.left())):
            trial = self.study.ask(self.distributions)
            self.asked += 1
            member = member_id(trial.number)
            self.trials[(group, member)] = trial
            asked[member] = dict(trial.params)
        self.handed[(group, epoch)] = asked
        return asked

    def adopt(self, group: str, members: dict[str, dict]) -> None:
        """Members a restored group trains that this study does not know: a group that asked for a
        refill after the study's last save (`StudySearch.save`) and before its sweep was
        stopped. Each becomes an Optuna trial with its values, and counts against the budget."""
        for member, values in members.items():
            if (group, member) not in self.trials:
                self.study.enqueue_trial(values)
                self.trials[(group, member)] = self.study.ask(self.distributions)
                self.asked += 1

    def report(self, group: str, results: dict[str, dict]) -> None:
        """A group's report: each member's latest values and status, member id -> dict."""
        for member, result in results.items():
            trial = self.trials.get((group, member))
            if trial is None or trial.number in self.told:
                continue
            value = result.get(self.metric)
            if result.get("status", RUNNING) != RUNNING:  # ended in this epoch: tell Optuna now
                self._tell(trial, result)
            elif value is not None and "epoch" in result:
                trial.report(value, result["epoch"])

    def finish(self, group: str, results: dict[str, dict]) -> None:
        """The group ended (normally or for good after its retries): every member that has not
        ended yet failed with it."""
        self.report(group, results)
        for (owner, _), trial in self.trials.items():
            if owner == group and trial.number not in self.told:
                self._tell(trial, {"status": FAILED})

    def report_trial(self, group: str, result: dict, ended: bool = False, error: bool = False) -> None:
        """An unfused trial's report (Tune's flat result): its one configuration's epoch, or,
        `ended`, how it ended (COMPLETE with its last value, PRUNED without one, FAIL on an
        error or a value that is not finite)."""
        member = next((m for g, m in self.trials if g == group), None)
        if member is None:
            return
        value = result.get(self.metric)
        status = RUNNING
        if ended:
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            status = FAILED if error or (value is not None and not finite) else (
                FINISHED if value is not None else STOPPED_EARLY)
        epoch = result.get("epoch", result.get("training_iteration"))
        self.report(group, {member: {**result, "epoch": epoch, "status": status}})

    def _tell(self, trial: optuna.trial.Trial, member: dict) -> None:
        value, status = member.get(self.metric), member.get("status")
        if status == FINISHED and value is not None:
            self.study.tell(trial, value)
        elif status == STOPPED_EARLY:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:  # diverged, failed, or its group failed before this member ended
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.told.add(trial.number)

    def sampled(self) -> dict[str, str]:
        """Each configuration's trial id in the analysis ('<group>-<member>' in a fused sweep) ->
        how it was chosen (sweeps/sampling.py)."""
        return sampled_by_id(self.study, {f"{group}-{member}" if self.fused else group: trial
                                          for (group, member), trial in self.trials.items()},
                             self.startup)

    def state(self) -> bytes:
        return pickle.dumps(self.__dict__)

    def load(self, state: bytes) -> None:
        self.__dict__.update(pickle.loads(state))


# The study as a Ray actor, named so the searcher finds it again after a --resume rebuilt it.
SharedStudy = ray.remote(num_cpus=0)(MemberStudy)


def study_actor_name(sweep: str) -> str:
    return f"gensweep-study-{sweep}"


def start_shared_study(sweep: str, space: dict[str, Range], num_configs: int, metric: str, mode: str,
                       seed: int, first: dict | None = None, startup: int = 10, fused: bool = True):
    """The sweep's study actor, new (a --resume's searcher loads its saved state into it). One
    process may run a sweep of one name twice (a test, a notebook): its actor is then reset."""
    settings = (space, num_configs, metric, mode, seed, first, startup, fused)
    # On the driver's node: the study must outlive any worker node the cluster loses.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = SharedStudy.options(name=study_actor_name(sweep), get_if_exists=True,
                                scheduling_strategy=here).remote(*settings)
    ray.get(actor.reset.remote(*settings))
    return actor


class StudySearch(Searcher):
    """Tune's searcher: hands each new Tune trial its configuration, or a fused group its K
    configurations, from the shared study, and passes the trials' reports to it, as the sweep's
    mode (`sweeps/modes.py`) says. It pickles only the study actor's name, so a --resume's
    unpickled searcher talks to the new run's actor."""

    def __init__(self, sweep: str, mode, study=None):
        super().__init__(metric=mode.args.metric, mode=mode.mode)
        self.actor_name, self.sweep_mode = study_actor_name(sweep), mode
        # The actor's handle (`start_shared_study`'s): holding it keeps the actor alive, which
        # Ray ends once no handle to it is left. An unpickled searcher looks it up by name, once.
        self._study = study

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_study": None}  # a handle would name the old run's actor

    @property
    def study(self):
        if self._study is None:
            self._study = ray.get_actor(self.actor_name)
        return self._study

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and the objective are the study's own

    def suggest(self, trial_id: str):
        members = ray.get(self.study.ask.remote(trial_id, self.sweep_mode.group_size))
        if not members:
            return Searcher.FINISHED
        return self.sweep_mode.suggestion(members)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.sweep_mode.tell(self.study, trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ray.get(self.sweep_mode.tell(self.study, trial_id, result or {}, ended=True, error=error))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            f.write(ray.get(self.study.state.remote()))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            ray.get(self.study.load.remote(f.read()))
