"""A sweep's mode, decided once, where the Tuner is built (`sweeps/tuner.py`): one Tune trial per
configuration, or (`--fuse K`) one Tune trial per fused group of up to K configurations.

Everything that differs between the two lives here and nowhere else: the trainable and its early
stopping (Tune's ASHA for trials, per-member ASHA inside a group), what the searcher hands a new
Tune trial and tells the study of its reports, how trial folders are named, and what the closing
table, the count of failed configurations and the count of unfinished ones read from Tune's
results. Nothing else in the sweep asks whether it is fused.
"""

from __future__ import annotations

import math

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from genmodels.names import MEMBER_IDS_KEY, MEMBER_RESULTS_KEY, MEMBERS_KEY, USABLE, group_members
from sweeps.console import Progress
from sweeps.study import member_results
from trainables.fused_trainable import MemberRungs, train_group
from trainables.rungs import rung_epochs
from trainables.trainable import train_trial

ASHA_REDUCTION = 2  # keep the better half at each rung
TABLE_ROWS = 5
OK, FAILED, UNFINISHED = "ok", "failed", "unfinished"  # how a closing table's row ended


def sweep_mode(args, mode: str) -> TrialSweep:
    """The sweep's mode from its options (`mode`: "min" or "max", the objective's direction)."""
    return FusedSweep(args, mode) if args.fuse > 1 else TrialSweep(args, mode)


class TrialSweep:
    """One Tune trial per configuration; Tune's ASHA (or FIFO) schedules them."""

    # Tune's own trial folder names (a fused sweep names its groups by trial id alone)
    trial_dirname_creator = None

    def __init__(self, args, mode: str):
        self.args, self.mode = args, mode

    @property
    def asha(self) -> bool:
        return self.args.scheduler == "asha"

    @property
    def tune_trials(self) -> int:
        return self.args.num_samples

    def progress(self) -> Progress:
        return Progress(self.tune_trials, self.args.epochs, self.args.metric, self.mode)

    def trainable(self, inputs: dict, study, plan):
        # Where ASHA may stop a trial: it draws its end-of-run figures there too.
        rungs = (rung_epochs(self.args.grace_period, ASHA_REDUCTION, self.args.epochs)
                 if self.asha else frozenset())
        return tune.with_parameters(train_trial, rungs=rungs, **inputs)

    def scheduler(self):
        if not self.asha:
            return FIFOScheduler()
        return ASHAScheduler(max_t=self.args.epochs, grace_period=self.args.grace_period,
                             reduction_factor=ASHA_REDUCTION)

    @property
    def group_size(self) -> int:
        """Configurations the searcher asks the study for per Tune trial."""
        return 1

    def suggestion(self, members: dict[str, dict]) -> dict:
        """A new Tune trial's config from the configurations the study handed out for it."""
        return next(iter(members.values()))

    def tell(self, study, trial_id: str, result: dict, ended: bool = False, error: bool = False):
        """Pass a trial's report (or its end) to the study; the call's Ray reference."""
        return study.report_trial.remote(trial_id, result, ended=ended, error=error)

    def rows(self, results, statuses: dict[str, str], space: dict) -> list[dict]:
        """One row per configuration from Tune's results: its id and values, its last value of
        the objective, its epochs and how it ended (OK, FAILED or UNFINISHED). `statuses`: trial
        folder name -> Ray's status, as Tune saved it (`SweepFolder.ray_statuses`)."""
        rows = []
        for result in results:
            metrics, config = result.metrics or {}, result.config or {}
            status = statuses.get(_folder_name(result))
            ended = (FAILED if result.error or status == "ERROR" else
                     OK if status in (None, "TERMINATED") else UNFINISHED)
            rows.append({"trial_id": metrics.get("trial_id"), **{k: config.get(k) for k in space},
                         self.args.metric: metrics.get(self.args.metric),
                         "epochs": metrics.get("training_iteration"), "ended": ended})
        return rows


class FusedSweep(TrialSweep):
    """One Tune trial per fused group of --fuse configurations, each member still a trial of its
    own; Tune runs the groups FIFO, and a `MemberRungs` actor stops members early (ASHA per
    member), whose slots the study refills."""

    @staticmethod
    def trial_dirname_creator(trial) -> str:
        # a group's folder: its trial id (its members' folders are inside, named by id)
        return f"{trial.trainable_name}_{trial.trial_id}"

    @property
    def tune_trials(self) -> int:
        return -(-self.args.num_samples // self.args.fuse)

    def progress(self) -> Progress:
        return Progress(self.tune_trials, self.args.epochs, self.args.metric, self.mode,
                        configurations=self.args.num_samples)

    def trainable(self, inputs: dict, study, plan):
        args = self.args
        # Per-member early stopping: one rung keeper for every member of every group.
        rungs = (MemberRungs.remote(args.grace_period, ASHA_REDUCTION, args.epochs, self.mode)
                 if self.asha else None)
        # A refill may bring any latent size of the space: every group pads to the largest.
        width = (int(plan.space["latent_dim"].high) if args.refill and "latent_dim" in plan.space
                 else None)
        return tune.with_parameters(train_group, metric=args.metric, mode=self.mode, rungs=rungs,
                                    study=study, refill=args.refill, latent_width=width, **inputs)

    def scheduler(self):
        return FIFOScheduler()  # Tune sees groups; the members' early stopping is MemberRungs'

    @property
    def group_size(self) -> int:
        return self.args.fuse

    def suggestion(self, members: dict[str, dict]) -> dict:
        return {MEMBERS_KEY: list(members.values()), MEMBER_IDS_KEY: list(members)}

    def tell(self, study, trial_id: str, result: dict, ended: bool = False, error: bool = False):
        # A group's end tells the study how each of its members ended (a failed group: they failed)
        if ended:
            return study.finish.remote(trial_id, member_results(result))
        return study.report.remote(trial_id, member_results(result))

    def rows(self, results, statuses: dict[str, str], space: dict) -> list[dict]:
        # A group's last report names all its members once it has ended (an interrupted or failed
        # group's, those of its last epoch: the analysis reads them all from its folder)
        metric, rows = self.args.metric, []
        for result in results:
            config, metrics = result.config or {}, result.metrics or {}
            members, group = metrics.get(MEMBER_RESULTS_KEY) or {}, metrics.get("trial_id")
            for member, values in group_members(config, [metrics]):
                final = members.get(member, {})
                ended = OK if final.get("status") in USABLE else FAILED
                rows.append({"trial_id": f"{group}-{member}",  # as the analysis and MLflow name it
                             **{k: values.get(k) for k in space}, metric: final.get(metric),
                             "epochs": final.get("epoch"), "ended": ended})
        return rows


def _folder_name(result) -> str:
    return str(result.path).rstrip("/").rsplit("/", 1)[-1]


def best_table(rows: list[dict], metric: str, mode: str) -> str:
    """The best TABLE_ROWS configurations by their last value of `metric`; a failed or unfinished
    (interrupted) one is never among them."""
    import pandas as pd

    if not rows:
        return "no trial reported a result"
    frame = pd.DataFrame(rows)
    usable = frame[(frame["ended"] == OK) & frame[metric].map(
        lambda v: v is not None and not (isinstance(v, float) and math.isnan(v)))]
    if usable.empty:
        return "no configuration ended with a result"
    usable = usable.drop(columns="ended").sort_values(metric, ascending=mode == "min")
    return usable.head(TABLE_ROWS).to_string(index=False, float_format=lambda v: f"{v:.4g}")


def unfinished(num_samples: int, handed_out: int, statuses: dict[str, str]) -> int:
    """What a stop left for --resume: trials (groups) neither terminated nor errored, as Tune saved
    them when it stopped, and the configurations the study has not yet handed out of the sweep's
    `num_samples`."""
    running = sum(1 for status in statuses.values() if status not in ("TERMINATED", "ERROR"))
    return running + max(0, num_samples - handed_out)
