"""The Ray Tune trainable of a fused sweep (`--fuse K`): one Tune trial = one fused group of up to
K configurations trained as one model (`genmodels.fused`), every member a first-class trial.

What a user sees per member is what an unfused trial has: its own MLflow child run (params,
per-epoch metrics, per-epoch sample grid, final figures, a true status, and a `gensweep.group` tag
naming its group), its own folder `<trial dir>/<member id>/` with `samples/`, figures and
`status.json`, and its own Optuna trial (`sweeps/study.py`, fed by the per-member results
in each report). Members end on their own:

- diverged: frozen at once inside the group (no device sync), recorded as diverged;
- stopped early: per-member asynchronous successive halving (`MemberRungs`, one Ray actor per
  sweep that sees every member of every group), recorded as stopped early;
and an ended member leaves the group at the end of the epoch, so it stops costing compute. Its slot
is refilled: the group asks the sweep's study (`sweeps/study.py`) for a fresh configuration,
which joins the group from the next epoch on and trains its own --epochs (a group runs until its
last member has), so the group stays full while the sweep has configurations left. On a GPU a
group's step takes about as long with 4 members as with 16 (docs/benchmarks.md), so a group that only
shrank would spend most of an ASHA sweep nearly empty. The group checkpoints its state every epoch
(weights, optimizers, RNG, which members train and since when, their sample history) and a
restored group continues exactly where its last checkpoint was.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from contextlib import nullcontext
from pathlib import Path

import ray
import torch
from ray import tune

from genmodels.classifier import scorer_from_cache
from genmodels.data import ImageData
from genmodels.device import resolve_device
from genmodels.figures import save_real_vs_model, save_sample_grid, save_samples_across_epochs
from genmodels.files import atomic_write, write_json, write_status
from genmodels.fused.tasks import FusedConfig
from genmodels.loop import (
    CHECKPOINT_FORMAT,
    EpochReport,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    load_checkpoint_configs,
)
from genmodels.names import (
    ADDED_MEMBERS_KEY,
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
from trainables.mlflow_trial import SweepRecords, start_tracker
from trainables.rungs import AshaRungs
from trainables.trainable import (
    folder_uploader,
    model_config_from_tune,
    trial_folder,
    write_placement,
)

GROUP_FILE = "group.pt"  # beside the checkpoint: members still training, statuses, sample grids


# Per-member ASHA as a Ray actor: one per sweep, seeing every member of every group.
MemberRungs = ray.remote(num_cpus=0)(AshaRungs)


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
    `genmodels.loop.export_model` writes a standalone run's: `load_model(folder)` reads it."""
    task = trainer.task
    network = task.model.member(k) if task.name == "fused-vae" else task.generator.member(k)
    atomic_write(folder / MODEL_WEIGHTS_FILE, lambda tmp: torch.save(network.state_dict(), tmp))
    write_json(folder / MODEL_CONFIG_FILE, {"format": CHECKPOINT_FORMAT,
                                            "model": task.name.removeprefix("fused-"),
                                            "model_config": cfg.to_dict()})


def train_group(config: dict, *, model: str, data: ImageData, train_settings: dict, fixed: dict,
                scorer_cache: dict | None, metric: str, mode: str,
                tracking: SweepRecords | None = None, rungs=None, study=None, refill: bool = False,
                latent_width: int | None = None) -> None:
    """One fused group. `config` holds the members' sampled values and their ids; `rungs` (a
    `MemberRungs` handle, or None) stops members early; `study` (the sweep's `MemberStudy` actor)
    gives fresh configurations for the slots of members that ended when `refill`;
    `latent_width` pads every member's latent (a refill's must fit: the search space's largest)."""
    ids = list(config[IDS_KEY])
    group_id, size = tune.get_context().get_trial_id(), len(ids)
    cpus = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    train_cfg = TrainConfig(**train_settings, num_threads=cpus)
    epochs = train_cfg.epochs  # each member's own; the group runs until its last member is done
    device = resolve_device(train_cfg.device)
    scorer = scorer_from_cache(scorer_cache, device) if scorer_cache else None
    trial_dir = trial_folder()
    upload = folder_uploader(trial_dir)

    # A restored group continues with the members its last checkpoint still trained.
    group = {"training": ids, "status": {i: RUNNING for i in ids}, "results": {},
             "grids": {i: [] for i in ids}, "epochs": {i: [] for i in ids},
             "added": {}, "joined": {}}  # refills: member -> its values, the group epoch it joined after
    checkpoint = tune.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint is not None else nullcontext()) as folder:
        if folder is not None:
            group = torch.load(Path(folder) / GROUP_FILE, weights_only=True)
        member_values = {**dict(zip(ids, config[MEMBERS_KEY])), **group["added"]}  # every member it had
        cfgs = {member: model_config_from_tune(model, {**fixed, **v}) for member, v in member_values.items()}
        # The padded latent size L never changes, so a group that shrank or grew rebuilds from its
        # checkpoint: a restored group keeps the L it was saved with. A refill must fit in it.
        width = (saved_latent_width(Path(folder) / CHECKPOINT_FILE) if folder is not None
                 else max([latent_width or 0, *(c.latent_dim for c in cfgs.values())]))
        fused = FusedConfig([cfgs[i] for i in group["training"]], latent_width=width)
        # The trainer's own copy: its epoch count grows with refills, the members' stays --epochs.
        trainer = Trainer.create(f"fused-{model}", fused, dataclasses.replace(train_cfg), data,
                                 scorer=scorer)
        if folder is not None:
            trainer.resume(Path(folder) / CHECKPOINT_FILE)
            if study is not None:  # members it asked for after the study's last save (sweep stopped)
                ray.get(study.adopt.remote(group_id, member_values))
    write_placement(trial_dir, trainer)
    training, status, joined = group["training"], group["status"], group["joined"]

    def group_epochs() -> int:
        return max(joined.get(m, 0) + epochs for m in training) if training else trainer.epoch

    trainer.train_cfg.epochs = group_epochs()
    trackers = {}

    def track(member: str) -> None:
        trackers[member] = start_tracker(tracking, trial_dir, cfgs[member], train_cfg, member=member,
                                         group=trial_dir.name)

    for member in training:
        track(member)

    def end(member: str, how: str, epoch: int, message: str | None = None) -> None:
        status[member] = how
        write_status(trial_dir / member, how, epoch, message)
        if how == DIVERGED:
            trackers[member].fail(message or "diverged", status=DIVERGED)
        else:
            trackers[member].finish(how)

    def report(epoch: int, results: dict, members: list[str], added: list[str]) -> None:
        """The group's epoch to Tune: the latest values of `members` (those that trained it or
        ended in it) and the refills `added` after it, so that result.json grows by one epoch's
        worth per report, however many members the group has had. The group's last report, once
        every member has ended, names them all: what the sweep's closing table reads."""
        if not training:
            members, added = list(results), list(group["added"])
        upload()  # on cloud storage: the members' new figures, statuses and models
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            torch.save(group, Path(folder) / GROUP_FILE)
            tune.report({metric: best_value(results, metric, mode), "members_training": len(training),
                         RESULTS_KEY: {m: results[m] for m in members if m in results},
                         ADDED_MEMBERS_KEY: {m: group["added"][m] for m in added}},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    def refill_slots(epoch: int, keep: list[int]) -> list[str]:
        """The members `keep` (indices) train on; the freed slots take fresh configurations from
        the study, as many as it has left. They join after this epoch; returns their ids."""
        new = ray.get(study.ask.remote(group_id, size - len(keep), epoch, group["results"])) \
            if refill and len(keep) < size else {}
        if new:
            cfgs.update({m: model_config_from_tune(model, {**fixed, **v}) for m, v in new.items()})
            trainer.task.add_members([cfgs[m] for m in new], train_cfg.seed)
            keep = keep + list(range(len(training), len(training) + len(new)))
            training.extend(new)
        if not keep:  # every member ended, and no configuration was left to take a slot
            training.clear()
        elif len(keep) < len(training):
            trainer.task.keep_members(keep)
            training[:] = [training[k] for k in keep]
        for member, values in new.items():
            group["added"][member] = values
            joined[member] = epoch
            status[member] = RUNNING
            group["grids"][member], group["epochs"][member] = [], []
            track(member)
        trainer.train_cfg.epochs = group_epochs()
        return list(new)

    def on_epoch(report_: EpochReport) -> None:
        epoch, results = report_.epoch, group["results"]  # every member's latest, ended ones too
        trained = list(training)
        member_status = trainer.task.status.as_list()
        for k, member in enumerate(training):
            own_epoch = epoch - joined.get(member, 0)  # the member's own epochs, from 1
            last = own_epoch == epochs
            values = {**member_metrics(report_.metrics, k), "epoch": own_epoch}
            if not member_status[k]["active"]:  # diverged during this epoch
                end(member, DIVERGED, own_epoch, f"training diverged at step "
                    f"{member_status[k]['diverged_step']}: non-finite loss")
                results[member] = {"epoch": own_epoch, "status": DIVERGED}
                continue
            out = trial_dir / member
            grid = save_sample_grid(report_.samples[k], out / "samples" / f"epoch_{own_epoch:03d}.png")
            group["grids"][member].append((report_.samples[k] * 255).round().to(torch.uint8).cpu())
            group["epochs"][member].append(own_epoch)
            stop = (rungs is not None and not last and ray.get(
                rungs.should_stop.remote(f"{group_id}-{member}", own_epoch, values.get(metric))))
            figures = {}
            if last or stop:
                figures = save_member_figures(trainer, k, group["grids"][member],
                                              group["epochs"][member], out)
                export_member(trainer, k, cfgs[member], out)
            trackers[member].log_epoch(own_epoch, values, grid, figures)
            if last or stop:
                end(member, FINISHED if last else STOPPED_EARLY, own_epoch)
            results[member] = {**values, "status": status[member]}
        # Members that ended leave the group: from the next epoch on they cost nothing, and fresh
        # configurations take their slots while the sweep has any left.
        added = refill_slots(epoch, [k for k, member in enumerate(training) if status[member] == RUNNING])
        report(epoch, results, trained, added)
        if not training:
            raise GroupEnded

    try:
        trainer.fit(on_epoch)
    except GroupEnded:
        return  # every member ended and no configuration was left to take a slot
    except TrainingDiverged as err:  # the last members still training diverged together
        results = group["results"]
        for member in list(training):
            own_epoch = err.epoch - joined.get(member, 0)
            end(member, DIVERGED, own_epoch, str(err))
            results[member] = {"epoch": own_epoch, "status": DIVERGED}
        training.clear()
        report(err.epoch, results, list(results), [])
    except BaseException as err:
        if not isinstance(err, SystemExit):  # SystemExit: Tune ends the function (normal)
            for member in training:
                trackers[member].fail(f"{type(err).__name__}: {err}")
        raise


def saved_latent_width(checkpoint: Path) -> int:
    """The padded latent size L of the fused group saved in `checkpoint`."""
    _, saved, _ = load_checkpoint_configs(checkpoint)
    return saved.get("latent_width") or max(m["latent_dim"] for m in saved["members"])


class GroupEnded(Exception):
    """Every member of the group has ended; the trial has nothing left to train."""
