"""The Ray Tune trainable of a fused sweep (`--fuse K`): one Tune trial = one fused group of up to
K configurations trained as one model (`genmodels.fused`), every member a first-class trial.

What a user sees per member is what an unfused trial has: its own MLflow child run (params,
per-epoch metrics, per-epoch sample grid, final figures, a true status, and a `gensweep.group` tag
naming its group), its own folder `<trial dir>/<member id>/` with `samples/`, figures and
`status.json`, and its own Optuna trial (`sweeps/fused_search.py`, fed by the per-member results
in each report). Members end on their own:

- diverged: frozen at once inside the group (no device sync), recorded as diverged;
- stopped early: per-member asynchronous successive halving (`MemberRungs`, one Ray actor per
  sweep that sees every member of every group), recorded as stopped early;
and an ended member leaves the group at the end of the epoch, so it stops costing compute. The
group checkpoints its state every epoch (weights, optimizers, RNG, which members still train, their
sample history) and a restored group continues exactly where its last checkpoint was.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from genmodels.classifier import scorer_from_cache
from genmodels.data import ImageData
from genmodels.device import resolve_device
from genmodels.figures import save_real_vs_model, save_sample_grid, save_samples_across_epochs
from genmodels.files import atomic_write, write_json, write_status
from genmodels.fused.tasks import FusedConfig
from genmodels.names import (
    CHECKPOINT_FILE,
    DIVERGED,
    FINISHED,
    MEMBERS_KEY,
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    RUNNING,
    STOPPED_EARLY,
)
from genmodels.names import MEMBER_IDS_KEY as IDS_KEY
from genmodels.names import MEMBER_RESULTS_KEY as RESULTS_KEY
from genmodels.training import CHECKPOINT_FORMAT, EpochReport, TrainConfig, Trainer, TrainingDiverged
from trainables.tracking import SweepRecords, start_tracker
from trainables.trainable import (
    folder_uploader,
    model_config_from_tune,
    rung_epochs,
    trial_folder,
    write_placement,
)

GROUP_FILE = "group.pt"  # beside the checkpoint: members still training, statuses, sample grids


@ray.remote(num_cpus=0)
class MemberRungs:
    """Asynchronous successive halving (ASHA, Li et al. 2020) for members of fused groups.

    Rungs at grace_period * reduction^i epochs. A member reaching a rung records its objective
    there and is stopped when it falls below the best 1/reduction of the values recorded at that
    rung so far (no cutoff until `reduction` values are in): the rule of Tune's ASHAScheduler,
    applied per member instead of per Tune trial.
    """

    def __init__(self, grace_period: int, reduction: int, max_epochs: int, mode: str):
        self.rungs = rung_epochs(grace_period, reduction, max_epochs)
        self.reduction, self.mode = reduction, mode
        self.recorded: dict[int, dict[str, float]] = {rung: {} for rung in self.rungs}

    def should_stop(self, member: str, epoch: int, value: float) -> bool:
        if epoch not in self.rungs or value is None or not math.isfinite(value):
            return False
        values = self.recorded[epoch]
        values[member] = value
        if len(values) < self.reduction:
            return False
        top = 100 / self.reduction
        if self.mode == "max":
            return value < np.percentile(list(values.values()), 100 - top)
        return value > np.percentile(list(values.values()), top)


def member_metrics(metrics: dict, k: int) -> dict:
    """Member k's metrics from a group's (lists per member; shared values such as timings stay)."""
    return {name: value[k] if isinstance(value, list) else value for name, value in metrics.items()}


def best_value(results: dict, metric: str, mode: str) -> float:
    values = [r[metric] for r in results.values() if math.isfinite(r.get(metric, math.nan))]
    if not values:
        return math.nan
    return max(values) if mode == "max" else min(values)


def save_member_figures(trainer: Trainer, k: int, grids: list, epochs: list, out: Path) -> dict:
    """Member k's end-of-run figures (the seed's): samples across epochs, real vs. model."""
    model = trainer.task.name.removeprefix("fused-")
    real, fake = trainer.task.comparison_images()
    label, name = (("reconstructed", "real_vs_reconstructed") if model == "vae"
                   else ("generated", "real_vs_generated"))
    return {
        "samples_across_epochs": save_samples_across_epochs(
            grids, epochs, out / "samples_across_epochs.png",
            title=f"{model.upper()} samples from fixed noise"),
        name: save_real_vs_model(real, fake[k], out / f"{name}.png", label),
    }


def export_member(trainer: Trainer, k: int, cfg, folder: Path) -> None:
    """Member k's trained network as its own plain files (`weights.pt`, `model.json`), as
    `genmodels.training.export_model` writes a standalone run's: `load_model(folder)` reads it."""
    task = trainer.task
    network = task.model.member(k) if task.name == "fused-vae" else task.generator.member(k)
    atomic_write(folder / MODEL_WEIGHTS_FILE, lambda tmp: torch.save(network.state_dict(), tmp))
    write_json(folder / MODEL_CONFIG_FILE, {"format": CHECKPOINT_FORMAT,
                                            "model": task.name.removeprefix("fused-"),
                                            "model_config": cfg.to_dict()})


def train_group(config: dict, *, model: str, data: ImageData, train_settings: dict, fixed: dict,
                scorer_cache: dict | None, metric: str, mode: str,
                tracking: SweepRecords | None = None, rungs=None, layout: str = "auto") -> None:
    """One fused group. `config` holds the members' sampled values and their ids; `rungs` (a
    `MemberRungs` handle, or None) stops members early; `layout` is the GAN's `FusedConfig.conv_layout`."""
    ids = list(config[IDS_KEY])
    cfgs = {i: model_config_from_tune(model, {**fixed, **values})
            for i, values in zip(ids, config[MEMBERS_KEY])}
    cpus = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    train_cfg = TrainConfig(**train_settings, num_threads=cpus)
    device = resolve_device(train_cfg.device)
    scorer = scorer_from_cache(scorer_cache, device) if scorer_cache else None
    trial_dir = trial_folder()
    upload = folder_uploader(trial_dir)

    # A restored group continues with the members its last checkpoint still trained.
    group = {"training": ids, "status": {i: RUNNING for i in ids}, "results": {},
             "grids": {i: [] for i in ids}, "epochs": {i: [] for i in ids}}
    checkpoint = tune.get_checkpoint()
    folder_cm = checkpoint.as_directory() if checkpoint is not None else None
    def fused_trainer(members: list[str]) -> Trainer:
        # A restored group that shrank keeps the padded latent size of all its members
        width = max(cfgs[i].latent_dim for i in ids)
        fused = FusedConfig([cfgs[i] for i in members], conv_layout=layout, latent_width=width)
        return Trainer.create(f"fused-{model}", fused, train_cfg, data, scorer=scorer)

    if folder_cm is not None:
        with folder_cm as folder:
            group = torch.load(Path(folder) / GROUP_FILE, weights_only=True)
            trainer = fused_trainer(group["training"])
            trainer.resume(Path(folder) / CHECKPOINT_FILE)
    else:
        trainer = fused_trainer(ids)
    write_placement(trial_dir, trainer)
    training, status = group["training"], group["status"]
    trackers = {i: start_tracker(tracking, trial_dir, cfgs[i], train_cfg, member=i, group=trial_dir.name)
                for i in training}

    def end(member: str, how: str, epoch: int, message: str | None = None) -> None:
        status[member] = how
        write_status(trial_dir / member, how, epoch, message)
        if how == DIVERGED:
            trackers[member].fail(message or "diverged", status=DIVERGED)
        else:
            trackers[member].finish(how)

    def report(epoch: int, results: dict) -> None:
        upload()  # on cloud storage: the members' new figures, statuses and models
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            torch.save(group, Path(folder) / GROUP_FILE)
            tune.report({metric: best_value(results, metric, mode), "members_training": len(training),
                         RESULTS_KEY: results}, checkpoint=tune.Checkpoint.from_directory(folder))

    def on_epoch(report_: EpochReport) -> None:
        epoch, results = report_.epoch, group["results"]  # every member's latest, ended ones too
        member_status = trainer.task.status.as_list()
        for k, member in enumerate(training):
            values = member_metrics(report_.metrics, k)
            if not member_status[k]["active"]:  # diverged during this epoch
                end(member, DIVERGED, epoch, f"training diverged at step "
                    f"{member_status[k]['diverged_step']}: non-finite loss")
                results[member] = {"epoch": epoch, "status": DIVERGED}
                continue
            out = trial_dir / member
            grid = save_sample_grid(report_.samples[k], out / "samples" / f"epoch_{epoch:03d}.png")
            group["grids"][member].append((report_.samples[k] * 255).round().to(torch.uint8).cpu())
            group["epochs"][member].append(epoch)
            stop = (rungs is not None and not report_.is_last
                    and ray.get(rungs.should_stop.remote(member, epoch, values.get(metric))))
            figures = {}
            if report_.is_last or stop:
                figures = save_member_figures(trainer, k, group["grids"][member],
                                              group["epochs"][member], out)
                export_member(trainer, k, cfgs[member], out)
            trackers[member].log_epoch(epoch, values, grid, figures)
            if report_.is_last or stop:
                end(member, FINISHED if report_.is_last else STOPPED_EARLY, epoch)
            results[member] = {**values, "status": status[member]}
        # Members that ended leave the group: from the next epoch on they cost nothing.
        keep = [k for k, member in enumerate(training) if status[member] == RUNNING]
        if keep and len(keep) < len(training):
            trainer.task.keep_members(keep)
            training[:] = [training[k] for k in keep]
        elif not keep:
            training.clear()
        report(epoch, results)
        if not training:
            raise GroupEnded

    try:
        trainer.fit(on_epoch)
    except GroupEnded:
        return  # every member ended before the last epoch (stopped early or diverged)
    except TrainingDiverged as err:  # the last members still training diverged together
        results = group["results"]
        for member in list(training):
            end(member, DIVERGED, err.epoch, str(err))
            results[member] = {"epoch": err.epoch, "status": DIVERGED}
        training.clear()
        report(err.epoch, results)
    except BaseException as err:
        if not isinstance(err, SystemExit):  # SystemExit: Tune ends the function (normal)
            for member in training:
                trackers[member].fail(f"{type(err).__name__}: {err}")
        raise


class GroupEnded(Exception):
    """Every member of the group has ended; the trial has nothing left to train."""
