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
from pathlib import Path

from genmodels.data import ImageData
from genmodels.figures import save_run_figures, save_sample_grid
from genmodels.files import write_status
from genmodels.loop import EpochReport, Trainer, TrainingDiverged
from genmodels.names import CHECKPOINT_FILE, DIVERGED, FINISHED
from genmodels.tasks import TASKS
from trainables.lifecycle import Records, earlier_status, resume_from, start_trial
from trainables.mlflow_trial import SweepRecords, start_tracker


class TrialDivergedBefore(RuntimeError):
    """A retried or resumed trial that had diverged: it ends at once, with the recorded reason."""


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
    trial = start_trial(train_settings, scorer_cache)
    earlier = earlier_status(trial.folder)
    if earlier.get("status") == DIVERGED:
        # Tune retries every error (--max-failures) and --resume every errored trial; a diverged
        # trial would only diverge again at the same step, so its retry ends at once, unchanged.
        raise TrialDivergedBefore(f"not trained again: {earlier.get('message') or 'diverged'}")
    model_cfg = model_config_from_tune(model, {**fixed, **config})
    trainer = Trainer.create(model, model_cfg, trial.train_cfg, data, scorer=trial.scorer)
    trial.started(trainer)
    with trial.checkpoint() as folder:
        if folder is not None:
            resume_from(trainer, folder / CHECKPOINT_FILE)
    records = Records(trial.folder, start_tracker(tracking, trial.folder, model_cfg, trial.train_cfg))
    backfill(records.tracker, trainer, trial.folder)

    def on_epoch(report: EpochReport) -> None:
        # The end-of-run figures at the last epoch, and at each rung: a trial the scheduler stops
        # there ends inside the report below, with no chance to draw them. Each drawing replaces
        # the one before, so a trial stopped early keeps those of its last epoch.
        drawn = report.is_last or report.epoch in rungs
        figures = save_run_figures(trainer, trial.folder) if drawn else {}
        records.log_epoch(report.epoch, report.metrics, report.samples, figures)
        if report.is_last:
            write_status(trial.folder, FINISHED, report.epoch)
        trial.report(trainer, report.metrics)

    try:
        trainer.fit(on_epoch)
    except TrainingDiverged as err:
        records.end(DIVERGED, err.epoch, str(err))
        trial.upload()
        raise  # Tune marks the trial ERROR with this message; Optuna records it as failed
    except SystemExit:
        # How Tune ends a trial's function: after its final report, when the scheduler (ASHA)
        # stops it early, or when the sweep is interrupted. Only the first is known here; the
        # driver closes the other two (TrialStatusCallback: stopped_early; close_sweep: KILLED).
        if trainer.epoch >= trial.train_cfg.epochs:
            records.close(FINISHED)
        raise
    except BaseException as err:
        records.failed(err)
        raise
    records.close(FINISHED)
