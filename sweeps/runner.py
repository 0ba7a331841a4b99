"""What `sweeps/vae_sweep.py` and `sweeps/gan_sweep.py` share: a sweep from its options
(`sweeps/options.py`) to its final table, through the checks, Ray, the Tuner and the test split.

Order of work, so that mistakes cost seconds and write nothing: parse and validate the options and
the search space, read and check the data set, check the tracking server answers (all before Ray
starts, each a one-line `error: ...` and exit code 2), then take the sweep's lock, start (or join)
Ray, check the resource request fits some node, train or load the scoring classifier once, and run
the trials. Exit codes: EXIT_* below (README, "Faults, exit codes and signals").
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from genmodels.data import (
    DataError,
    ensure_dataset_files,
    load_dataset,
    resolve_data_dir,
)
from genmodels.names import (
    DIRECTIONS,
    LOCK_FILE,
    OPTIONS_FILE,
    SAMPLED_FILE,
    SWEEP_LOG_FILE,
    tracking_uri,
)
from sweeps import search_space as spaces
from sweeps.cluster import (
    RayStart,
    check_cluster_answers,
    check_local_gpus,
    check_resources,
    set_ray_environment,
    trials_the_cluster_holds,
)
from sweeps.console import send_library_output_to, setup_lines
from sweeps.held_out import (
    chosen_table,
    log_test_numbers,
    measure_chosen_in,
    scorer_for_test,
)
from sweeps.mlflow_sweep import (
    close_sweep,
    open_sweep,
    tag_sampled,
    trials_view_link,
)
from sweeps.modes import TrialSweep, sweep_mode
from sweeps.options import (
    SweepError,
    build_parser,
    check_options,
    fixed_model_values,
    given_options,
    parse_options,
    restore_options,
    train_settings,
)
from sweeps.orphans import ORPHANS_DIR, set_aside_orphans
from sweeps.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Stopped, StopSignals
from sweeps.storage import QUERY_REFUSED, SweepFolder, storage_uri
from sweeps.store import TrackingError, open_store

TUNER_FILE = "tuner.pkl"  # Tune's saved Tuner in the sweep's folder: a sweep exists once it does

EXIT_OK = 0  # every requested trial finished, or was stopped early by the scheduler
EXIT_BAD_INPUT = 2  # an option, the data, the tracking server, or the sweep already running
EXIT_TRIALS_FAILED = 3  # the sweep ended, but some trials failed or diverged
__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_TRIALS_FAILED",
           "run"]


# What a bad option, data folder, tracking store or storage raises before any trial starts.
BAD_INPUT_ERRORS = (SweepError, TrackingError, DataError, ValueError, FileNotFoundError)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())  # one line, whatever the cause


def run(model: str, argv: list[str] | None = None) -> int:
    """The sweep, from its command line to its exit code (EXIT_* above)."""
    with StopSignals() as stop:
        try:
            return sweep_in(model, argv, stop)
        except BAD_INPUT_ERRORS as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Stopped as err:  # a signal outside Tune's graceful stop (sweeps/signals.py)
            print(f"stopped by {err}: {stop.leaves}", file=sys.stderr)
            return err.exit_code


def lock_sweep(experiment: Path) -> FileLock:
    """One driver per sweep: a second run or --resume of a running sweep is refused, never run
    twice into one folder. The OS releases the lock when the driver dies, even by SIGKILL."""
    experiment.mkdir(parents=True, exist_ok=True)
    lock = FileLock(experiment / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepError(f"the sweep {experiment.name!r} in {experiment.parent} is running in "
                         "another process (its lock is held); wait for it to end, or stop it and "
                         "--resume") from None
    return lock


@dataclass
class SweepPlan:
    """Everything decided before Ray starts: the options, the search space, where results go."""

    model: str
    args: argparse.Namespace
    space: dict[str, spaces.Range]
    settings: dict  # TrainConfig fields shared by every trial
    storage: str  # Ray's storage: a resolved local folder or a URI
    mlflow_uri: str

    @property
    def experiment(self) -> str:
        """The sweep's own folder (or URI) in the storage."""
        return f"{self.storage}/{self.args.name}"

    @property
    def local(self) -> bool:
        return "://" not in self.storage

    @functools.cached_property
    def folder(self) -> SweepFolder:
        """The sweep's folder, local or on cloud storage, for the sweep's own reads and writes."""
        return SweepFolder(self.experiment)

    @property
    def mode(self) -> str:
        return DIRECTIONS[self.args.metric]

    @property
    def log_file(self) -> Path:
        """Ray's and MLflow's own messages: in the sweep's folder, or here for remote storage."""
        folder = Path(self.experiment) if self.local else Path.cwd()
        return folder / (SWEEP_LOG_FILE if self.local else f"{self.args.name}-{SWEEP_LOG_FILE}")

    @property
    def fixed_values(self) -> dict:
        return fixed_model_values(self.model, self.space)

    @functools.cached_property
    def sweep(self) -> TrialSweep:
        """The sweep's mode (`sweeps/modes.py`): unfused trials or fused groups, decided here once."""
        return sweep_mode(self.args, self.mode)


def sweep_in(model: str, argv: list[str] | None, stop: StopSignals) -> int:
    """The sweep of `argv` under the stop signals `stop`: its exit code, or the bad input's error
    (BAD_INPUT_ERRORS) raised before Ray starts (`run` prints it, `sweeps.run_sweep` raises it)."""
    plan = prepare(model, parse_options(model, argv), given_options(model, argv))
    print(spaces.describe(model, plan.space))
    if plan.args.print_space:
        return EXIT_OK
    data = check_inputs(plan)

    set_ray_environment(local=not plan.args.address)

    from sweeps.tuner import build_tuner  # Ray's side: imported once the checks have passed

    # Up to here nothing was written. A --resume locks its (existing) folder before Ray starts.
    lock = lock_sweep(Path(plan.experiment)) if plan.local and plan.args.resume else None
    tracking = None
    stop.leaves = (f"continue with --resume --name {plan.args.name}" if plan.args.resume else
                   "no trial had started; run the same command again")
    print(setup_lines(plan), flush=True)
    send_library_output_to(plan.log_file)
    ray_start = RayStart(plan.args.address)
    try:
        ray_start(stop)
        resources = check_resources(plan.args)
        at_once = plan.args.max_concurrent or trials_the_cluster_holds(plan.args)
        if note := plan.sweep.free_slots_line(at_once):
            print(note, flush=True)
        if not plan.args.resume:  # kept with the options: the report derives TPE's random share from it
            plan.args.at_once = at_once
        if plan.local and lock is None:
            lock = lock_sweep(Path(plan.experiment))
        save_options(plan)
        data, scorer_cache = load_inputs(plan, data)
        tracking = open_records(plan)
        stop.check()
        tuner, study, sweep = build_tuner(plan, data, scorer_cache, tracking, resources, at_once,
                                          stop)
        stop.leaves = f"continue with --resume --name {plan.args.name}"  # Tune saved the Tuner
        results = fit(plan, tuner, tracking, stop)
        if results is None:
            return stop.exit_code()  # a second signal: the sweep continues with --resume
        record_sampled(plan, study, tracking)
        return report(plan, sweep, study, results, tracking, stop, data, scorer_cache)
    except Stopped:  # outside Tune's graceful stop: close the records (run() says how to go on)
        if tracking is not None:
            try:
                close_sweep(tracking, None, interrupted=True, metric=plan.args.metric, mode=plan.mode)
            except Stopped:
                stop.leaves += ("; a second signal cut the closing of its MLflow runs short, some "
                                "may still show RUNNING")
        raise
    finally:
        ray_start.shutdown()
        if lock is not None:
            lock.release()


def prepare(model: str, args: argparse.Namespace, given: set[str]) -> SweepPlan:
    """Resolve --resume and the storage, build and check the search space and the training
    settings: everything that needs neither the data, Ray nor MLflow."""
    storage = storage_uri(args.storage_path)
    experiment = open_storage(storage, args.name)
    if args.resume:
        if not experiment.exists(TUNER_FILE):
            raise SweepError(f"--resume: no sweep {args.name!r} in {storage}; check --name and "
                             "--storage-path")
        args = restore_options(args, given, experiment, build_parser(model))
        check_options(args)
    if not args.resume and experiment.exists(TUNER_FILE):
        raise SweepError(f"a sweep named {args.name!r} already exists in {storage}: pass --resume "
                         "to continue it, or another --name")
    overrides = spaces.load_overrides(args.space) if args.space else None
    space = spaces.search_space(model, overrides)
    # Saved resolved, so a --resume from another folder finds the same data and records.
    args.mlflow_uri = tracking_uri(args.mlflow_uri)
    args.data_dir = str(resolve_data_dir(args.data_dir))
    return SweepPlan(model=model, args=args, space=space, settings=train_settings(args),
                     storage=storage, mlflow_uri=args.mlflow_uri)


def open_storage(storage: str, name: str) -> SweepFolder:
    """The sweep's folder in --storage-path, checked readable now (a cloud URI: its credentials and
    endpoint), not after Ray has started and the trials have failed one by one."""
    if "?" in storage:
        raise SweepError(f"--storage-path {storage}: {QUERY_REFUSED}")
    try:
        experiment = SweepFolder.reached(f"{storage}/{name}")
    except (OSError, ValueError) as err:  # pyarrow's errors: OSError, ArrowInvalid (a ValueError)
        raise SweepError(f"--storage-path {storage}: cannot read it ({' '.join(str(err).split())[:300]}). "
                         "A local folder, or a cloud URI (s3://bucket/path, gs://bucket/path) "
                         "with its credentials set (for S3: AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a server other than "
                         "AWS; for GCS: GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
                         "application-default login`)") from err
    return experiment


def check_inputs(plan: SweepPlan):
    """Before Ray starts, in seconds, writing nothing (but a --download, and a new default
    tracking store once everything else passed): a GPU request this machine cannot meet, the data
    set (read and checked whole: a missing, empty or truncated file is found here, and the trials
    get this very copy), a --address where no cluster answers, and a tracking store MLflow cannot
    use (sweeps/store.py). Returns the data."""
    args = plan.args
    check_local_gpus(args)
    ensure_dataset_files(args.dataset, args.data_dir, download=args.download)
    data = load_dataset(args.dataset, args.data_dir)
    try:  # what every trial trains on: the training images left after the validation split
        available = len(data.hold_out(plan.settings["val_fraction"]).train_images)
    except ValueError as err:
        raise SweepError(f"--val-fraction: {err}") from err
    if args.train_subset is not None and args.train_subset > available:
        raise SweepError(f"--train-subset {args.train_subset} is more than the {available} "
                         f"training images of {args.dataset} left after holding out "
                         f"--val-fraction {plan.settings['val_fraction']} for validation")
    images = min(args.train_subset or available, available)
    if args.batch_size > images:
        raise SweepError(f"--batch-size {args.batch_size} is larger than the {images} training "
                         "images; lower --batch-size or raise --train-subset")
    check_cluster_answers(args.address)
    open_store(plan.mlflow_uri)  # last: a new default store is the one thing this writes
    return data


def save_options(plan: SweepPlan) -> None:
    """The sweep's options in its folder: what --resume reuses."""
    if not plan.args.resume:
        plan.folder.write_json(OPTIONS_FILE, vars(plan.args))


def open_records(plan: SweepPlan):
    """The sweep's MLflow experiment and parent run (on --resume, the same parent)."""
    args = plan.args
    return open_sweep(plan.mlflow_uri, args.name, plan.model, plan.experiment, vars(args),
                      spaces.describe(plan.model, plan.space), args.resume, plan.mode,
                      tuple(plan.space))


def load_inputs(plan: SweepPlan, data) -> tuple:
    """The data set (loaded once, by check_inputs) and for the GAN the scoring classifier (trained
    once per data set and cached across sweeps); both reach the trials through Ray's object store."""
    args = plan.args
    if plan.model != "gan":
        return data, None
    from genmodels.classifier import EPOCHS, ensure_classifier, load_cache

    scoring_data = data.subset(args.train_subset) if args.smoke else data
    path = ensure_classifier(args.dataset, scoring_data, args.cache_dir,
                             epochs=args.classifier_epochs or EPOCHS)
    return data, load_cache(path)


def fit(plan: SweepPlan, tuner, tracking, stop: StopSignals):
    """Run the trials; None when a second Ctrl-C cut Tune's own stop short (the records are
    closed KILLED). A first Ctrl-C or SIGTERM ends fit() gracefully; `stop` remembers it."""
    args = plan.args
    with stop.tune_stops():
        try:
            return tuner.fit()
        except Stopped:
            close_sweep(tracking, None, interrupted=True, metric=args.metric, mode=plan.mode)
            print(f"interrupted: continue with --resume --name {args.name}", file=sys.stderr)
            return None


def record_sampled(plan: SweepPlan, study, tracking) -> None:
    """How each configuration was chosen (default, TPE's random start-up, or TPE's guess), read
    from the sweep's Optuna study (sweeps/sampling.py): written to the sweep's folder
    (SAMPLED_FILE) and as a tag on each trial's MLflow run, where the analysis reads it."""
    import ray

    try:
        kinds = ray.get(study.sampled.remote())
        plan.folder.write_json(SAMPLED_FILE, kinds)
        tag_sampled(tracking, kinds)
    except Exception as err:  # the sweep's results are safe; the report falls back to its estimate
        print(f"warning: could not record how the configurations were chosen: {err}", file=sys.stderr)


def handed_out(study) -> int:
    """Configurations the sweep's study has handed out, to trials, groups and refills."""
    import ray

    return ray.get(study.handed_out.remote())


def test_chosen_trials(plan: SweepPlan, data, scorer_cache: dict | None):
    """The test split, once, for the best --test-top trials by the validation objective
    (sweeps/held_out.py); the ranked table of every configuration, or None when skipped."""
    args = plan.args
    top = args.test_top
    if top == 0:
        return None
    try:
        ranked = measure_chosen_in(plan.folder, plan.model, args.metric, plan.mode, top, data,
                                   plan.settings, scorer_for_test(scorer_cache))
    except Exception as err:  # the sweep's results are safe; say what is missing
        print(f"warning: could not measure the chosen trials on the test split: {err}",
              file=sys.stderr)
        return None
    print(f"\ntest split, once, for the best {top} by {args.metric} (validation):")
    print(chosen_table(ranked, args.metric, plan.space))
    return ranked


def report(plan: SweepPlan, sweep, study, results, tracking, stop: StopSignals, data=None,
           scorer_cache: dict | None = None) -> int:
    """Close the MLflow records, print the best trials and where everything is; the exit code.
    `sweep`: the sweep's mode (`sweeps/modes.py`), which reads Tune's results; `study`: the
    sweep's study actor, which counts the configurations it handed out."""
    from sweeps.modes import FAILED, best_table, unfinished

    args = plan.args
    # Tune's own record of how each trial stood when it stopped: the results it returns end them all
    statuses = plan.folder.ray_statuses()
    left = unfinished(args.num_samples, handed_out(study), statuses)
    interrupted = stop.received is not None or left > 0
    orphans = set_aside_orphans(plan.folder, {Path(r.path).name for r in results}, tracking)
    if orphans:
        print(f"set aside {len(orphans)} trial(s) that a killed driver started but never "
              f"recorded (their configurations ran again): folders moved to "
              f"{plan.experiment}/{ORPHANS_DIR}, MLflow runs deleted (`mlflow runs restore "
              "--run-id ID` brings one back)")
    leaderboard = None if interrupted else test_chosen_trials(plan, data, scorer_cache)
    close_sweep(tracking, results, interrupted, args.metric, plan.mode, leaderboard)
    if leaderboard is not None:
        log_test_numbers(tracking, leaderboard)
    rows = sweep.rows(results, statuses, plan.space)
    print(f"\nbest trials by {args.metric} ({plan.mode}):")
    print(best_table(rows, args.metric, plan.mode))
    errors = sum(row["ended"] == FAILED for row in rows)
    if errors:
        print(f"{errors} trial(s) failed or diverged; see their error.txt in the trial folders")
    print(f"results, checkpoints and per-trial figures: {plan.experiment}")
    print(f"MLflow runs: experiment {args.name!r} in {plan.mlflow_uri} "
          f"(`mlflow ui --backend-store-uri {plan.mlflow_uri}`); the trials ranked: "
          f"{trials_view_link(plan.mlflow_uri, tracking.experiment_id)}")
    if interrupted:
        print(f"interrupted with {left} trial(s) unfinished: continue with --resume "
              f"--name {args.name}", file=sys.stderr)
        return stop.exit_code()
    return EXIT_TRIALS_FAILED if errors else EXIT_OK
