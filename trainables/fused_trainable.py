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
from pathlib import Path

import ray
import torch
from ray import tune

from genmodels.data import ImageData
from genmodels.figures import save_figures
from genmodels.fused.tasks import FusedConfig
from genmodels.loop import (
    EpochReport,
    Trainer,
    TrainingDiverged,
    load_checkpoint_configs,
    write_model,
)
from genmodels.names import (
    ADDED_MEMBERS_KEY,
    CHECKPOINT_FILE,
    DIVERGED,
    FINISHED,
    MEMBERS_KEY,
    RUNNING,
    STOPPED_EARLY,
)
from genmodels.names import MEMBER_IDS_KEY as IDS_KEY
from genmodels.names import MEMBER_RESULTS_KEY as RESULTS_KEY
from trainables.lifecycle import Records, Trial, resume_from, start_trial
from trainables.mlflow_trial import SweepRecords, start_tracker
from trainables.rungs import AshaRungs
from trainables.trainable import model_config_from_tune

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
    real, fake = trainer.task.comparison_images()
    return save_figures(trainer.task.name.removeprefix("fused-"), grids, epochs, real, fake[k], out)


def export_member(trainer: Trainer, k: int, cfg, folder: Path) -> None:
    """Member k's trained network as its own plain files, as `genmodels.loop.export_model` writes
    a standalone run's: `load_model(folder)` reads it."""
    task = trainer.task
    network = task.model.member(k) if task.name == "fused-vae" else task.generator.member(k)
    write_model(folder, task.name.removeprefix("fused-"), cfg.to_dict(), network.state_dict())


class FusedGroup:
    """One fused group's life as a Tune trial: its members' records, their ends, the refills that
    take the freed slots, and each epoch's report. What the group checkpoints beside the trainer
    (`GROUP_FILE`) is `state`: the members still training, every member's status and latest
    results, their sample grids so far, the refills' values and the group epoch each joined after."""

    def __init__(self, config: dict, *, model: str, data: ImageData, trial: Trial, fixed: dict,
                 metric: str, mode: str, tracking: SweepRecords | None, rungs, study, refill: bool,
                 latent_width: int | None):
        ids = list(config[IDS_KEY])
        self.model, self.trial, self.fixed, self.metric, self.mode = model, trial, fixed, metric, mode
        self.tracking, self.rungs, self.study, self.refill = tracking, rungs, study, refill
        self.group_id, self.size = tune.get_context().get_trial_id(), len(ids)
        self.epochs = trial.train_cfg.epochs  # each member's own; the group runs until its last is done
        self.state = {"training": ids, "status": {i: RUNNING for i in ids}, "results": {},
                      "grids": {i: [] for i in ids}, "epochs": {i: [] for i in ids},
                      "added": {}, "joined": {}}
        with trial.checkpoint() as folder:
            if folder is not None:  # a restored group continues with the members it still trained
                self.state = torch.load(folder / GROUP_FILE, weights_only=True)
            member_values = {**dict(zip(ids, config[MEMBERS_KEY])), **self.state["added"]}
            self.cfgs = {member: self.config_of(values) for member, values in member_values.items()}
            # The padded latent size L never changes, so a group that shrank or grew rebuilds from
            # its checkpoint: a restored group keeps the L it was saved with. A refill must fit.
            width = (saved_latent_width(folder / CHECKPOINT_FILE) if folder is not None
                     else max([latent_width or 0, *(c.latent_dim for c in self.cfgs.values())]))
            fused = FusedConfig([self.cfgs[i] for i in self.training], latent_width=width)
            # The trainer's own copy: its epoch count grows with refills, the members' stays --epochs.
            self.trainer = Trainer.create(f"fused-{model}", fused, dataclasses.replace(trial.train_cfg),
                                          data, scorer=trial.scorer)
            if folder is not None:
                resume_from(self.trainer, folder / CHECKPOINT_FILE)
                if study is not None:  # members it asked for after the study's last save (sweep stopped)
                    ray.get(study.adopt.remote(self.group_id, member_values))
        trial.started(self.trainer)
        self.trainer.train_cfg.epochs = self.group_epochs()
        self.records = {member: self.records_of(member) for member in self.training}

    @property
    def training(self) -> list[str]:
        return self.state["training"]

    def config_of(self, values: dict):
        return model_config_from_tune(self.model, {**self.fixed, **values})

    def records_of(self, member: str) -> Records:
        tracker = start_tracker(self.tracking, self.trial.folder, self.cfgs[member], self.trial.train_cfg,
                                member=member, group=self.trial.folder.name)
        return Records(self.trial.folder / member, tracker)

    def group_epochs(self) -> int:
        """The group epoch after which its last member still training has trained --epochs."""
        joined = self.state["joined"]
        return max(joined.get(m, 0) + self.epochs for m in self.training) if self.training \
            else self.trainer.epoch

    def own_epoch(self, member: str, epoch: int) -> int:
        """A member's own epoch count (from 1) at group epoch `epoch`."""
        return epoch - self.state["joined"].get(member, 0)

    def end(self, member: str, how: str, epoch: int, message: str | None = None) -> None:
        self.state["status"][member] = how
        self.records[member].end(how, epoch, message)
        if how == DIVERGED:
            self.state["results"][member] = {"epoch": epoch, "status": DIVERGED}

    def fit(self) -> None:
        try:
            self.trainer.fit(self.on_epoch)
        except GroupEnded:
            return  # every member ended and no configuration was left to take a slot
        except TrainingDiverged as err:  # the last members still training diverged together
            for member in self.training:
                self.end(member, DIVERGED, self.own_epoch(member, err.epoch), str(err))
            self.training.clear()
            self.report(err.epoch, [], [])
        except BaseException as err:
            if not isinstance(err, SystemExit):  # SystemExit: Tune ends the function (normal)
                for member in self.training:
                    self.records[member].failed(err)
            raise

    def on_epoch(self, report: EpochReport) -> None:
        epoch, trained = report.epoch, list(self.training)
        member_status = self.trainer.task.status.as_list()
        for k, member in enumerate(trained):
            own_epoch = self.own_epoch(member, epoch)
            if not member_status[k]["active"]:  # diverged during this epoch
                self.end(member, DIVERGED, own_epoch, f"training diverged at step "
                         f"{member_status[k]['diverged_step']}: non-finite loss")
            else:
                self.member_epoch(member, k, own_epoch, member_metrics(report.metrics, k), report.samples[k])
        # Members that ended leave the group: from the next epoch on they cost nothing, and fresh
        # configurations take their slots while the sweep has any left.
        running = [k for k, member in enumerate(trained) if self.state["status"][member] == RUNNING]
        added = self.refill_slots(epoch, running)
        self.report(epoch, trained, added)
        if not self.training:
            raise GroupEnded

    def member_epoch(self, member: str, k: int, own_epoch: int, metrics: dict, samples) -> None:
        """Member k's epoch on the record; it ends after its last epoch, or when ASHA stops it."""
        state, values = self.state, {**metrics, "epoch": own_epoch}
        state["grids"][member].append((samples * 255).round().to(torch.uint8).cpu())
        state["epochs"][member].append(own_epoch)
        last = own_epoch == self.epochs
        stop = (self.rungs is not None and not last and ray.get(self.rungs.should_stop.remote(
            f"{self.group_id}-{member}", own_epoch, values.get(self.metric))))
        figures, out = {}, self.trial.folder / member
        if last or stop:
            figures = save_member_figures(self.trainer, k, state["grids"][member],
                                          state["epochs"][member], out)
            export_member(self.trainer, k, self.cfgs[member], out)
        self.records[member].log_epoch(own_epoch, values, samples, figures)
        if last or stop:
            self.end(member, FINISHED if last else STOPPED_EARLY, own_epoch)
        state["results"][member] = {**values, "status": state["status"][member]}

    def refill_slots(self, epoch: int, keep: list[int]) -> list[str]:
        """The members `keep` (indices) train on; the freed slots take fresh configurations from
        the study, as many as it has left. They join after this epoch; returns their ids."""
        state, training, task = self.state, self.training, self.trainer.task
        new = ray.get(self.study.ask.remote(self.group_id, self.size - len(keep), epoch, state["results"])) \
            if self.refill and len(keep) < self.size else {}
        if new:
            self.cfgs.update({member: self.config_of(values) for member, values in new.items()})
            task.add_members([self.cfgs[m] for m in new], self.trial.train_cfg.seed)
            keep = keep + list(range(len(training), len(training) + len(new)))
            training.extend(new)
        if not keep:  # every member ended, and no configuration was left to take a slot
            training.clear()
        elif len(keep) < len(training):
            task.keep_members(keep)
            training[:] = [training[k] for k in keep]
        for member, values in new.items():
            state["added"][member], state["joined"][member] = values, epoch
            state["status"][member], state["grids"][member], state["epochs"][member] = RUNNING, [], []
            self.records[member] = self.records_of(member)
        self.trainer.train_cfg.epochs = self.group_epochs()
        return list(new)

    def report(self, epoch: int, members: list[str], added: list[str]) -> None:
        """The group's epoch to Tune: the latest values of `members` (those that trained it or
        ended in it) and the refills `added` after it, so that result.json grows by one epoch's
        worth per report, however many members the group has had. The group's last report, once
        every member has ended, names them all: what the sweep's closing table reads."""
        results, all_added = self.state["results"], self.state["added"]
        if not self.training:
            members, added = list(results), list(all_added)
        self.trial.report(self.trainer, {
            self.metric: best_value(results, self.metric, self.mode), "members_training": len(self.training),
            RESULTS_KEY: {m: results[m] for m in members if m in results},
            ADDED_MEMBERS_KEY: {m: all_added[m] for m in added}}, extra={GROUP_FILE: self.state})


def train_group(config: dict, *, model: str, data: ImageData, train_settings: dict, fixed: dict,
                scorer_cache: dict | None, metric: str, mode: str,
                tracking: SweepRecords | None = None, rungs=None, study=None, refill: bool = False,
                latent_width: int | None = None) -> None:
    """One fused group. `config` holds the members' sampled values and their ids; `rungs` (a
    `MemberRungs` handle, or None) stops members early; `study` (the sweep's `MemberStudy` actor)
    gives fresh configurations for the slots of members that ended when `refill`;
    `latent_width` pads every member's latent (a refill's must fit: the search space's largest)."""
    trial = start_trial(train_settings, scorer_cache)
    FusedGroup(config, model=model, data=data, trial=trial, fixed=fixed, metric=metric, mode=mode,
               tracking=tracking, rungs=rungs, study=study, refill=refill, latent_width=latent_width).fit()


def saved_latent_width(checkpoint: Path) -> int:
    """The padded latent size L of the fused group saved in `checkpoint`."""
    _, saved, _ = load_checkpoint_configs(checkpoint)
    return saved.get("latent_width") or max(m["latent_dim"] for m in saved["members"])


class GroupEnded(Exception):
    """Every member of the group has ended; the trial has nothing left to train."""
