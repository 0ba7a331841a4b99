"""Ray Tune's side of a sweep: the search space as Tune's distributions, the scheduler, the Tuner.

Only `sweeps/runner.py` imports this module, once the checks have passed: everything before it
(options, the search space, the data check) runs without Ray.
"""

from __future__ import annotations

from optuna.samplers import TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeps.callbacks import ConsoleCallback, TrialStatusCallback
from sweeps.console import Progress
from sweeps.search_space import Range
from trainables.tracking import SweepRecords
from trainables.trainable import train_trial

ASHA_REDUCTION = 2  # keep the better half at each rung


def to_tune(space: dict[str, Range]) -> dict:
    """Our ranges as Tune's distributions (sampled by Optuna through OptunaSearch)."""
    return {name: tune_distribution(r) for name, r in space.items()}


def tune_distribution(r: Range):
    if r.integer:
        # Tune's integer upper bounds are exclusive; ours are inclusive.
        sample = tune.lograndint if r.log else tune.randint
        return sample(int(r.low), int(r.high) + 1)
    return (tune.loguniform if r.log else tune.uniform)(r.low, r.high)


def build_tuner(plan, data, scorer_cache: dict | None, tracking: SweepRecords,
                resources: dict) -> tune.Tuner:
    """The trainable with the sweep's shared inputs (shipped once through Ray's object store) and
    its resources, in a new Tuner (Optuna's TPE, ASHA or FIFO) or, on --resume, the restored one.

    `plan` is the runner's SweepPlan: the options, the search space and the training settings.
    """
    args = plan.args
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, model=plan.model, data=data,
                             train_settings=plan.settings,
                             fixed=plan.fixed_values,
                             scorer_cache=scorer_cache, tracking=tracking),
        resources)
    if args.resume:
        return tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    scheduler = (ASHAScheduler(max_t=args.epochs, grace_period=args.grace_period,
                               reduction_factor=ASHA_REDUCTION)
                 if args.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=to_tune(plan.space),
        tune_config=tune.TuneConfig(
            metric=args.metric, mode=plan.mode, num_samples=args.num_samples,
            search_alg=OptunaSearch(sampler=TPESampler(seed=args.seed)),
            scheduler=scheduler, max_concurrent_trials=args.max_concurrent),
        run_config=tune.RunConfig(
            name=args.name, storage_path=plan.storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[ConsoleCallback(Progress(args.num_samples, args.epochs, args.metric,
                                                plan.mode)),
                       TrialStatusCallback(tracking, args.epochs)],
            verbose=0),  # our own lines instead of Tune's tables (sweeps/console.py)
    )
