"""What every trial does around its training, whether it trains one configuration
(`trainables.trainable.train_trial`) or a fused group of them (`trainables.fused_trainable`):

    trial = start_trial(train_settings, scorer_cache)   # folder, uploader, settings, device, scorer
    trainer = Trainer.create(..., trial.train_cfg, data, scorer=trial.scorer)
    trial.started(trainer)                              # placement.json
    with trial.checkpoint() as folder:                  # Tune's, if the trial was restored
        resume_from(trainer, folder / CHECKPOINT_FILE)
    records = Records(trial.folder, start_tracker(...)) # one per configuration
    ...  records.log_epoch(...); trial.report(trainer, metrics); records.end(...)

A trial's folder is where its figures, statuses and placement go, from whichever node runs it:

- storage on a file system every node mounts (local, NFS): the trial's folder in the sweep's
  storage itself. Ray's own answer, `tune.get_context().get_trial_dir()`, is a staging folder on
  the node running the trial that only the driver's node copies into the storage: a trial on
  another machine kept its figures and status to itself (measured with a worker node given its own
  /tmp, docs/benchmarks.md), and a worker reused from an ended trial (`reuse_actors`) gets yet
  another folder that nobody copies.
- cloud storage (s3://, gs://): Ray's trial working folder on the node running the trial, whose
  new files that node uploads to the trial's folder in the storage before each report.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
import torch
from ray import tune

from genmodels.classifier import scorer_from_cache
from genmodels.device import resolve_device
from genmodels.figures import save_sample_grid
from genmodels.files import read_status, write_json, write_status
from genmodels.loop import TrainConfig, Trainer
from genmodels.names import CHECKPOINT_FILE, DIVERGED, PLACEMENT_FILE, STATUS_FILE
from trainables.mlflow_trial import NoTracker, TrialTracker

UPLOAD_THREADS = 8  # a trial's new files sent to cloud storage side by side (folder_uploader)


class CheckpointError(RuntimeError):
    """The trial's checkpoint cannot be loaded; the trial ends with this reason (never a crash)."""


def on_cloud_storage(storage) -> bool:
    """Whether the sweep's storage (Ray's StorageContext) is cloud storage (s3://, gs://) rather
    than a file system every node mounts (local, NFS)."""
    return not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)


def trial_folder() -> Path:
    """This trial's folder (see the module's docstring), made if needed."""
    storage = tune.get_context().get_storage()
    if on_cloud_storage(storage):
        folder = Path(storage.trial_working_directory)
    else:
        folder = Path(storage.trial_fs_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_uploader(folder: Path) -> Callable[[], None]:
    """On cloud storage, a function that uploads the files of the trial's `folder` that are new or
    changed since its last call into the trial's folder in the storage; on a shared file system,
    one that does nothing (the folder is already there). Only what changed: an upload of the whole
    folder at every epoch would send a long run's sample grids (and a fused group's, for every
    member) again and again."""
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


def resume_from(trainer: Trainer, checkpoint_file: Path) -> None:
    """The trainer's state from its checkpoint. One that cannot be loaded (truncated, corrupt, or
    a pickle that would run code: `weights_only=True` refuses it) ends the trial with that reason
    (`CheckpointError`) instead of training from a wrong state."""
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


@dataclass
class Trial:
    """One Tune trial's surroundings: its folder and uploader, its training settings (threads
    from the CPUs Tune gave it), its device (CUDA when Ray gave it a real GPU) and scorer."""

    folder: Path
    upload: Callable[[], None]
    train_cfg: TrainConfig
    device: torch.device
    scorer: object | None

    def started(self, trainer: Trainer) -> None:
        """Where and how this trial runs: node, Ray's GPU ids, the device torch used, when, the
        worker's pid (what a fault test kills)."""
        import ray

        write_json(self.folder / PLACEMENT_FILE, {
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": str(trainer.device),
            "threads": trainer.train_cfg.num_threads, "started_at": time.time(), "pid": os.getpid()})

    @contextmanager
    def checkpoint(self) -> Iterator[Path | None]:
        """The folder of the checkpoint a restored trial (retried after its worker died, or
        resumed) continues from exactly, or None for a trial that starts fresh. Load the trainer
        from it with `resume_from`; the files `report` saved beside it are there too."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def report(self, trainer: Trainer, metrics: dict, extra: dict | None = None) -> None:
        """One epoch to Tune, with a checkpoint of the trainer (and `extra`, name -> object, saved
        beside it), once the trial's new files are in the storage."""
        self.upload()
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            for name, obj in (extra or {}).items():
                torch.save(obj, Path(folder) / name)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def start_trial(train_settings: dict, scorer_cache: dict | None) -> Trial:
    folder = trial_folder()
    cpus = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    train_cfg = TrainConfig(**train_settings, num_threads=cpus)
    device = resolve_device(train_cfg.device)
    scorer = scorer_from_cache(scorer_cache, device) if scorer_cache else None
    return Trial(folder, folder_uploader(folder), train_cfg, device, scorer)


class Records:
    """One configuration's records, in its folder (`samples/`, figures, `status.json`) and in its
    MLflow run (`tracker`): each epoch logged, then one true end."""

    def __init__(self, folder: Path, tracker: TrialTracker | NoTracker):
        self.folder, self.tracker = folder, tracker
        self.ended = False

    def log_epoch(self, epoch: int, metrics: dict, samples: torch.Tensor,
                  figures: dict[str, Path]) -> None:
        grid = save_sample_grid(samples, self.folder / "samples" / f"epoch_{epoch:03d}.png")
        self.tracker.log_epoch(epoch, metrics, grid, figures)

    def end(self, how: str, epoch: int, message: str | None = None) -> None:
        """Its status.json and its run's end: finished, stopped early, or diverged (with why)."""
        write_status(self.folder, how, epoch, message)
        self.close(how, message)

    def close(self, how: str, message: str | None = None) -> None:
        """Its run's end alone (status.json already written, or kept as it is); once."""
        if self.ended:
            return
        self.ended = True
        if how == DIVERGED:
            self.tracker.fail(message or "diverged", status=DIVERGED)
        else:
            self.tracker.finish(how)

    def failed(self, err: BaseException) -> None:
        """The trial's process ends with an error: its run says so (once)."""
        if not self.ended:
            self.ended = True
            self.tracker.fail(f"{type(err).__name__}: {err}")
