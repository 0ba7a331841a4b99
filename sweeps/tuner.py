"""Ray Tune's side of a sweep: the search space as Tune's distributions, the scheduler, the Tuner.

Only `sweeps/runner.py` imports this module, once the checks have passed: everything before it
(options, the search space, the data check) runs without Ray.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ray import cloudpickle, tune

from sweeps.callbacks import ConsoleCallback, TrialStatusCallback
from sweeps.modes import TrialSweep
from sweeps.search_space import default_point, startup_trials
from sweeps.study import StudySearch, start_shared_study
from trainables.mlflow_trial import SweepRecords


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
                resources: dict, at_once: int, stop=None) -> tuple[tune.Tuner, object, TrialSweep]:
    """The trainable with the sweep's shared inputs (shipped once through Ray's object store) and
    its resources, in a new Tuner (Optuna's TPE, ASHA or FIFO) or, on --resume, the restored one;
    the sweep's study actor (`sweeps/study.py`), which lives as long as its caller holds it; and
    the sweep's mode (`sweeps/modes.py`), which the closing table reads Tune's results with.

    `plan` is the runner's SweepPlan: the options, the search space and the training settings.
    `at_once`: trials (groups) running together. Given to Tune, it also lets Tune create that many
    trials at once: without it, Tune with a searcher creates the next trial only when the last one
    has its worker, so workers start one after another (about 10 s each on a 2-core CPU; a
    large cluster fills slowly, and short trials never reached a second node).
    `stop` (the runner's StopSignals) tells the status callback an interrupt from an early stop;
    A trial whose worker or node dies is retried from its last checkpoint (`--max-failures`).
    """
    args = plan.args
    sweep = plan.sweep
    inputs = dict(model=plan.model, data=data, train_settings=plan.settings,
                  fixed=plan.fixed_values, scorer_cache=scorer_cache, tracking=tracking)
    # The sweep's Optuna study: the searcher asks it for each new trial's (or group's)
    # configurations and, in a fused sweep, the groups ask it for refills; on --resume the
    # searcher loads its saved state into it. (A fused group's trainable holds its handle with or
    # without refills: an actor lives as long as a handle to it does.)
    study = start_shared_study(args.name, plan.space, args.num_samples, args.metric, plan.mode,
                               seed=args.seed, first=first_point(plan),
                               startup=startup_trials(args.num_samples),
                               fused=sweep.group_size > 1)
    trainable = tune.with_resources(sweep.trainable(inputs, study, plan), resources)
    callbacks = [ConsoleCallback(sweep.progress()),
                 TrialStatusCallback(tracking, args.epochs, stop)]
    failure = tune.FailureConfig(max_failures=args.max_failures)
    if args.resume:
        if plan.local:
            follow_moved_folder(Path(plan.experiment))
        # Errored trials resume from their checkpoints too (a worker killed once retries ran out).
        tuner = tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
        resume_settings(tuner, callbacks, failure, at_once)
        return tuner, study, sweep
    tuner = tune.Tuner(
        trainable,
        param_space={},  # every configuration comes from the searcher
        tune_config=tune.TuneConfig(
            metric=args.metric, mode=plan.mode, num_samples=sweep.tune_trials,
            search_alg=StudySearch(args.name, sweep, study=study),
            # A trial that ends hands its worker process to the next one (Tune resets the function
            # trainable's session): no new process, imports or CUDA context per trial.
            # About 10 s per trial on a 2-core CPU (docs/benchmarks.md); every trial still builds
            # its own model, optimizer and RNG from its seed, so results are the same.
            reuse_actors=True,
            scheduler=sweep.scheduler(), max_concurrent_trials=at_once,
            trial_dirname_creator=sweep.trial_dirname_creator),
        run_config=tune.RunConfig(
            name=args.name, storage_path=plan.storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=failure, callbacks=callbacks,
            verbose=0),  # our own lines instead of Tune's tables (sweeps/console.py)
    )
    return tuner, study, sweep


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
