"""The Ray Tune trainable: one trial = one run of the shared training loop.

Tune calls `train_trial(config)` with the sampled hyperparameters; everything else (the data set,
the fixed training settings, the scoring classifier) arrives once per sweep through
`tune.with_parameters`, i.e. Ray's object store, never re-read or re-downloaded per trial. Each
epoch reports the metrics and a checkpoint; a restored trial (retried after its worker died, or
resumed) continues exactly from its last checkpoint, and a checkpoint that cannot be loaded
(truncated, corrupt, or a pickle that would run code: `weights_only=True` refuses it) ends the trial
with that reason instead of training from a wrong state. Per-epoch sample grids and the end-of-run
figures go to the trial's directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs
from ray import tune

from genmodels.classifier import scorer_from_cache
from genmodels.data import ImageData
from genmodels.device import resolve_device
from genmodels.figures import save_run_figures, save_sample_grid
from genmodels.files import read_status, write_json, write_status
from genmodels.loop import EpochReport, TrainConfig, Trainer, TrainingDiverged
from genmodels.names import CHECKPOINT_FILE, DIVERGED, FINISHED, PLACEMENT_FILE, STATUS_FILE
from genmodels.tasks import TASKS
from trainables.mlflow_trial import SweepRecords, start_tracker

UPLOAD_THREADS = 8  # a trial's new files sent to cloud storage side by side (folder_uploader)


class TrialDivergedBefore(RuntimeError):
    """A retried or resumed trial that had diverged: it ends at once, with the recorded reason."""


class CheckpointError(RuntimeError):
    """The trial's checkpoint cannot be loaded; the trial ends with this reason (never a crash)."""


def model_config_from_tune(model: str, values: dict):
    """The model's config from the sampled plus the fixed values, strictly: an unknown or missing
    key is an error, never a silent default (a space that names `netG_lr` must not quietly train
    every trial at lr_g's default)."""
    cfg_class, _ = TASKS[model]
    fields = {f.name for f in dataclasses.fields(cfg_class)}
    unknown, missing = set(values) - fields, fields - set(values)
    if unknown or missing:
        raise ValueError(f"{model} config: unknown keys {sorted(unknown)}, missing keys "
                         f"{sorted(missing)}; it takes exactly {sorted(fields)}")
    return cfg_class(**values)


def on_cloud_storage(storage) -> bool:
    """Whether the sweep's storage (Ray's StorageContext) is cloud storage (s3://, gs://) rather
    than a file system every node mounts (local, NFS)."""
    return not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)


def trial_folder() -> Path:
    """This trial's folder, where its figures, status and placement go, from whichever node runs it:

    - storage on a file system every node mounts (local, NFS): the trial's folder in the sweep's
      storage itself. Ray's own answer, `tune.get_context().get_trial_dir()`, is a staging folder
      on the node running the trial that only the driver's node copies into the storage: a trial
      on another machine kept its figures and status to itself (measured with a worker node given
      its own /tmp, docs/benchmarks.md), and a worker reused from an ended trial (`reuse_actors`)
      gets yet another folder that nobody copies.
    - cloud storage (s3://, gs://): Ray's trial working folder on the node running the trial,
      whose new files that node uploads to the trial's folder in the storage before each report
      (`folder_uploader`)."""
    storage = tune.get_context().get_storage()
    if on_cloud_storage(storage):
        folder = Path(storage.trial_working_directory)
    else:
        folder = Path(storage.trial_fs_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_uploader(folder: Path) -> Callable[[], None]:
    """On cloud storage, a function that uploads the files of the trial's `folder` (trial_folder)
    that are new or changed since its last call into the trial's folder in the storage; on a
    shared file system, one that does nothing (the folder is already there). Only what changed:
    an upload of the whole folder at every epoch would send a long run's sample grids (and a fused
    group's, for every member) again and again."""
    storage = tune.get_context().get_storage()
    if not on_cloud_storage(storage):
        return lambda: None
    sent: dict[str, tuple[int, int]] = {}

    def send(path: Path, relative: str) -> None:
        pyarrow.fs.copy_files(str(path), f"{storage.trial_fs_path}/{relative}",
                              source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=storage.storage_filesystem)

    def upload() -> None:
        changed = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative, stat = path.relative_to(folder).as_posix(), path.stat()
            if sent.get(relative) != (stat.st_mtime_ns, stat.st_size):
                changed[relative] = (path, (stat.st_mtime_ns, stat.st_size))
        # Side by side: a fused group's epoch is one sample grid per member, and each upload is a
        # round trip to the store. All are done before the report that follows returns.
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(lambda item: send(item[1][0], item[0]), changed.items()))
        sent.update({relative: stamp for relative, (_, stamp) in changed.items()})

    return upload


def earlier_status(trial_dir: Path) -> dict:
    """How an earlier attempt of this trial ended (its status.json), or {}. On cloud storage it is
    read from the trial's folder in the storage, not from `trial_dir`: a retry on another node, and
    every --resume (a new Ray session, so a new working folder), start with an empty one."""
    storage = tune.get_context().get_storage()
    if not on_cloud_storage(storage):
        return read_status(trial_dir)
    try:
        with storage.storage_filesystem.open_input_stream(
                f"{storage.trial_fs_path}/{STATUS_FILE}") as stored:
            return json.loads(stored.read())
    except FileNotFoundError:
        return {}


def write_placement(trial_dir: Path, trainer: Trainer) -> None:
    """Where and how this trial ran: node, Ray's GPU ids, the device torch used, when, the
    worker's pid (what a fault test kills)."""
    import ray

    placement = {"node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": str(trainer.device),
                 "threads": trainer.train_cfg.num_threads, "started_at": time.time(),
                 "pid": os.getpid()}
    write_json(trial_dir / PLACEMENT_FILE, placement)


def resume_from(trainer: Trainer, checkpoint_file: Path) -> None:
    try:
        trainer.resume(checkpoint_file)
    except Exception as err:  # UnpicklingError, a torn zip's RuntimeError, EOFError, KeyError...
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        # `from None`: the cause may be an unpicklable torch error; this message says it all.
        raise CheckpointError(
            f"cannot resume this trial: its checkpoint {checkpoint_file.name} is unreadable or "
            f"unsafe ({type(err).__name__}: {first_line}); delete the trial's checkpoint_* "
            "folder to retrain it from scratch"
        ) from None


def backfill(tracker, trainer: Trainer, trial_dir: Path) -> None:
    """Epochs the checkpoint holds but the trial's run lacks, written now from the trial's own
    records (a copied sweep folder resumed into a run of its own; writes a killed worker held back
    while the server was away). The tracker skips the epochs its run has, so each is there once."""
    for epoch, (metrics, samples) in enumerate(zip(trainer.history, trainer.sample_history),
                                               start=1):
        grid = trial_dir / "samples" / f"epoch_{epoch:03d}.png"
        if not grid.exists():
            save_sample_grid(samples, grid)  # the uint8 grid the checkpoint keeps
        tracker.log_epoch(epoch, metrics, grid, {})


def train_trial(config: dict, *, model: str, data: ImageData, train_settings: dict,
                fixed: dict, scorer_cache: dict | None,
                tracking: SweepRecords | None = None, rungs: frozenset[int] = frozenset()) -> None:
    """One trial. `fixed` holds the model options that are not searched (e.g. hidden_dim);
    `rungs`: the epochs after which the scheduler (ASHA) may stop it (`rung_epochs`)."""
    trial_dir = trial_folder()
    upload = folder_uploader(trial_dir)
    earlier = earlier_status(trial_dir)
    if earlier.get("status") == DIVERGED:
        # Tune retries every error (--max-failures) and --resume every errored trial; a diverged
        # trial would only diverge again at the same step, so its retry ends at once, unchanged.
        raise TrialDivergedBefore(f"not trained again: {earlier.get('message') or 'diverged'}")
    model_cfg = model_config_from_tune(model, {**fixed, **config})
    cpus = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    train_cfg = TrainConfig(**train_settings, num_threads=cpus)
    device = resolve_device(train_cfg.device)  # CUDA when Ray gave this trial a real GPU
    scorer = scorer_from_cache(scorer_cache, device) if scorer_cache else None
    trainer = Trainer.create(model, model_cfg, train_cfg, data, scorer=scorer)

    write_placement(trial_dir, trainer)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from(trainer, Path(folder) / CHECKPOINT_FILE)

    tracker = start_tracker(tracking, trial_dir, model_cfg, train_cfg)
    backfill(tracker, trainer, trial_dir)

    def on_epoch(report: EpochReport) -> None:
        grid = save_sample_grid(report.samples, trial_dir / "samples" / f"epoch_{report.epoch:03d}.png")
        # The end-of-run figures at the last epoch, and at each rung: a trial the scheduler stops
        # there ends inside tune.report below, with no chance to draw them. Each drawing replaces
        # the one before, so a trial stopped early keeps those of its last epoch.
        drawn = report.is_last or report.epoch in rungs
        figures = save_run_figures(trainer, trial_dir) if drawn else {}
        tracker.log_epoch(report.epoch, report.metrics, grid, figures)
        if report.is_last:
            write_status(trial_dir, FINISHED, report.epoch)
        upload()
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            tune.report(report.metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        trainer.fit(on_epoch)
    except TrainingDiverged as err:
        write_status(trial_dir, DIVERGED, err.epoch, str(err))
        upload()
        tracker.fail(str(err), status=DIVERGED)
        raise  # Tune marks the trial ERROR with this message; Optuna records it as failed
    except SystemExit:
        # How Tune ends a trial's function: after its final report, when the scheduler (ASHA)
        # stops it early, or when the sweep is interrupted. Only the first is known here; the
        # driver closes the other two (TrialStatusCallback: stopped_early; close_sweep: KILLED).
        if trainer.epoch >= train_cfg.epochs:
            tracker.finish(FINISHED)
        raise
    except BaseException as err:
        tracker.fail(f"{type(err).__name__}: {err}")
        raise
    tracker.finish(FINISHED)
