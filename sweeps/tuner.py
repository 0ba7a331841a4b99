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
                resources: dict, stop=None, skip_trials: frozenset[str] = frozenset()) -> tune.Tuner:
    """The trainable with the sweep's shared inputs (shipped once through Ray's object store) and
    its resources, in a new Tuner (Optuna's TPE, ASHA or FIFO) or, on --resume, the restored one.

    `plan` is the runner's SweepPlan: the options, the search space and the training settings.
    `stop` (the runner's StopSignals) tells the status callback an interrupt from an early stop;
    `skip_trials`: trials that diverged before, which --resume ends at once instead of retrying.
    A trial whose worker or node dies is retried from its last checkpoint (`--max-failures`).
    """
    args = plan.args
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, model=plan.model, data=data,
                             train_settings=plan.settings,
                             fixed=plan.fixed_values,
                             scorer_cache=scorer_cache, tracking=tracking,
                             skip_trials=skip_trials),
        resources)
    callbacks = [ConsoleCallback(Progress(args.num_samples, args.epochs, args.metric, plan.mode)),
                 TrialStatusCallback(tracking, args.epochs, stop)]
    failure = tune.FailureConfig(max_failures=args.max_failures)
    if args.resume:
        # Errored trials resume from their checkpoints too (a worker killed once retries ran out).
        tuner = tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
        resume_settings(tuner, callbacks, failure, args.max_concurrent)
        return tuner
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
            failure_config=failure, callbacks=callbacks,
            verbose=0),  # our own lines instead of Tune's tables (sweeps/console.py)
    )


def resume_settings(tuner: tune.Tuner, callbacks: list, failure: tune.FailureConfig,
                    max_concurrent: int | None) -> None:
    """What a restored Tuner must take from this command, not from its pickle: the callbacks (they
    hold this run's MLflow parent run), the retry policy and the concurrency. Tuner.restore takes
    no argument for them, so they are set on its internal Tuner (Ray 2.x: `_local_tuner`)."""
    internal = tuner._local_tuner
    internal._run_config.callbacks = callbacks
    internal._run_config.failure_config = failure
    if max_concurrent is not None:
        internal._tune_config.max_concurrent_trials = max_concurrent
