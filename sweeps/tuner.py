"""Ray Tune's side of a sweep: the search space as Tune's distributions, the scheduler, the Tuner.

Only `sweeps/runner.py` imports this module, once the checks have passed: everything before it
(options, the search space, the data check) runs without Ray.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.callbacks import ConsoleCallback, TrialStatusCallback
from sweeps.console import Progress
from sweeps.search_space import default_point, startup_trials
from sweeps.study import StudySearch, start_shared_study
from trainables.fused_trainable import MemberRungs, train_group
from trainables.mlflow_trial import SweepRecords
from trainables.rungs import rung_epochs
from trainables.trainable import train_trial

ASHA_REDUCTION = 2  # keep the better half at each rung


def short_trial_name(trial) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def tune_trials(args) -> int:
    """Tune trials of a sweep: one per configuration, or one per fused group of --fuse K."""
    return -(-args.num_samples // args.fuse)


def follow_moved_folder(experiment: Path) -> None:
    """A sweep folder copied or moved elsewhere resumes into itself. Tune points its restored
    trials at the folder's new place, but not the experiment spec that its search algorithm makes
    new trials from (Ray 2.60): their checkpoints would go to the original folder. This sets that
    spec's storage to the folder's place, in the saved search state that Tuner.restore reads, as
    Tune does for its trials (`TuneController._restore_trials`)."""
    for path in experiment.glob("search_gen_state-*.json"):  # Tune's cloudpickle, despite .json
        state = cloudpickle.loads(path.read_bytes())
        spec = state["experiment"].spec
        storage = spec["storage"]
        if (storage.storage_fs_path, storage.experiment_dir_name) == (str(experiment.parent),
                                                                       experiment.name):
            continue
        storage = copy.copy(storage)
        storage.storage_fs_path, storage.experiment_dir_name = str(experiment.parent), experiment.name
        state["experiment"].storage = spec["storage"] = storage
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(cloudpickle.dumps(state))
        temporary.replace(path)  # atomic: a crash leaves the old file, never half a file


def build_tuner(plan, data, scorer_cache: dict | None, tracking: SweepRecords,
                resources: dict, at_once: int, stop=None) -> tuple[tune.Tuner, object]:
    """The trainable with the sweep's shared inputs (shipped once through Ray's object store) and
    its resources, in a new Tuner (Optuna's TPE, ASHA or FIFO) or, on --resume, the restored one;
    and the sweep's study actor (`sweeps/study.py`), which lives as long as its caller holds it.

    `plan` is the runner's SweepPlan: the options, the search space and the training settings.
    `at_once`: trials (groups) running together. Given to Tune, it also lets Tune create that many
    trials at once: without it, Tune with a searcher creates the next trial only when the last one
    has its worker, so workers start one after another (about 10 s each on the 2-core CI box; a
    large cluster fills slowly, and short trials never reached a second node).
    `stop` (the runner's StopSignals) tells the status callback an interrupt from an early stop;
    A trial whose worker or node dies is retried from its last checkpoint (`--max-failures`).
    """
    args = plan.args
    fused = args.fuse > 1
    inputs = dict(model=plan.model, data=data, train_settings=plan.settings,
                  fixed=plan.fixed_values, scorer_cache=scorer_cache, tracking=tracking)
    # The sweep's Optuna study: the searcher asks it for each new trial's (or group's)
    # configurations and, in a fused sweep, the groups ask it for refills; on --resume the
    # searcher loads its saved state into it. (A fused group's trainable holds its handle with or
    # without refills: an actor lives as long as a handle to it does.)
    study = start_shared_study(args.name, plan.space, args.num_samples, args.metric, plan.mode,
                               seed=args.seed, first=first_point(plan),
                               startup=startup_trials(args.num_samples), fused=fused)
    if fused:
        # Per-member early stopping: one rung keeper for every member of every group.
        rungs = (MemberRungs.remote(args.grace_period, ASHA_REDUCTION, args.epochs, plan.mode)
                 if args.scheduler == "asha" else None)
        # A refill may bring any latent size of the space: every group pads to the largest.
        width = (int(plan.space["latent_dim"].high) if args.refill and "latent_dim" in plan.space
                 else None)
        function = tune.with_parameters(train_group, metric=args.metric, mode=plan.mode,
                                        rungs=rungs, study=study, refill=args.refill,
                                        latent_width=width, **inputs)
    else:
        # Where ASHA may stop a trial: it draws its end-of-run figures there too.
        rungs = (rung_epochs(args.grace_period, ASHA_REDUCTION, args.epochs)
                 if args.scheduler == "asha" else frozenset())
        function = tune.with_parameters(train_trial, rungs=rungs, **inputs)
    trainable = tune.with_resources(function, resources)
    configurations = args.num_samples if args.fuse > 1 else None
    progress = Progress(tune_trials(args), args.epochs, args.metric, plan.mode,
                        configurations=configurations)
    callbacks = [ConsoleCallback(progress),
                 TrialStatusCallback(tracking, args.epochs, stop)]
    failure = tune.FailureConfig(max_failures=args.max_failures)
    if args.resume:
        if plan.local:
            follow_moved_folder(Path(plan.experiment))
        # Errored trials resume from their checkpoints too (a worker killed once retries ran out).
        tuner = tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
        resume_settings(tuner, callbacks, failure, at_once)
        return tuner, study
    if fused:
        # Tune sees groups; the members' early stopping is MemberRungs' (in the trainable).
        scheduler = FIFOScheduler()
    else:
        scheduler = (ASHAScheduler(max_t=args.epochs, grace_period=args.grace_period,
                                   reduction_factor=ASHA_REDUCTION)
                     if args.scheduler == "asha" else FIFOScheduler())
    search = StudySearch(args.name, args.fuse, args.metric, plan.mode, study=study)
    tuner = tune.Tuner(
        trainable,
        param_space={},  # every configuration comes from `search`
        tune_config=tune.TuneConfig(
            metric=args.metric, mode=plan.mode, num_samples=tune_trials(args),
            search_alg=search,
            # A trial that ends hands its worker process to the next one (Tune resets the function
            # trainable's session): no new process, imports or CUDA context per trial.
            # About 10 s per trial on a 2-core CPU (docs/benchmarks.md); every trial still builds
            # its own model, optimizer and RNG from its seed, so results are the same.
            reuse_actors=True,
            scheduler=scheduler, max_concurrent_trials=at_once,
            # a group's folder: its trial id (its members' folders are inside, named by id)
            trial_dirname_creator=short_trial_name if fused else None),
        run_config=tune.RunConfig(
            name=args.name, storage_path=plan.storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=failure, callbacks=callbacks,
            verbose=0),  # our own lines instead of Tune's tables (sweeps/console.py)
    )
    return tuner, study


def first_point(plan) -> dict | None:
    """The configuration of the sweep's first trial: the seed's default, unless --no-default-first
    or an override file moved a range past it (the setup lines say so: sweeps/console.py)."""
    if plan.args.no_default_first:
        return None
    return default_point(plan.model, plan.space)


def resume_settings(tuner: tune.Tuner, callbacks: list, failure: tune.FailureConfig,
                    max_concurrent: int) -> None:
    """What a restored Tuner must take from this command, not from its pickle: the callbacks (they
    hold this run's MLflow parent run), the retry policy and the concurrency. Tuner.restore takes
    no argument for them, so they are set on its internal Tuner (Ray 2.x: `_local_tuner`)."""
    internal = tuner._local_tuner
    internal._run_config.callbacks = callbacks
    internal._run_config.failure_config = failure
    internal._tune_config.max_concurrent_trials = max_concurrent
