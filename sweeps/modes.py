"""A sweep's mode, decided once from its options (`SweepPlan.sweep`): one Tune trial per
configuration, or (`--fuse K`) one Tune trial per fused group of up to K configurations.

Everything that differs between the two lives here and nowhere else: the console's words for what
runs at once, the trainable and its early stopping (Tune's ASHA for trials, per-member ASHA inside a
group), what the searcher hands a new Tune trial and tells the study of its reports, how trial
folders are named, and what the closing table, the count of failed configurations and the count of
unfinished ones read from Tune's results. Nothing else in the sweep asks whether it is fused.

The mode is made before Ray starts (the sweep's header describes it), so Ray's side is imported
where it is used.
"""

from __future__ import annotations

from pathlib import Path

from genmodels.names import MEMBER_IDS_KEY, MEMBER_RESULTS_KEY, MEMBERS_KEY, USABLE, group_members
from sweeps.console import Progress
from trainables.rungs import rung_epochs

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
        from ray import tune

        from trainables.trainable import train_trial

        # Where ASHA may stop a trial: it draws its end-of-run figures there too.
        rungs = (rung_epochs(self.args.grace_period, ASHA_REDUCTION, self.args.epochs)
                 if self.asha else frozenset())
        return tune.with_parameters(train_trial, rungs=rungs, **inputs)

    def scheduler(self):
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        if not self.asha:
            return FIFOScheduler()
        return ASHAScheduler(max_t=self.args.epochs, grace_period=self.args.grace_period,
                             reduction_factor=ASHA_REDUCTION)

    @property
    def group_size(self) -> int:
        """Configurations the searcher asks the study for per Tune trial."""
        return 1

    @property
    def refill(self) -> bool:
        """Whether a slot whose configuration ended takes a fresh one inside its Tune trial."""
        return False

    def units(self, count: int | None) -> str:
        """What runs, `count` at a time, in the console's words: "1 trial", "4 groups of 16";
        "trials", "groups of 16" for a count not known."""
        return counted(count, "trial")

    def free_slots_line(self, at_once: int) -> str | None:
        """A header line when slots the cluster has stay free (a fused sweep's, see there)."""
        return None

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
            status = statuses.get(Path(result.path).name)
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
        from ray import tune

        from trainables.fused_trainable import MemberRungs, train_group

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
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()  # Tune sees groups; the members' early stopping is MemberRungs'

    @property
    def group_size(self) -> int:
        return self.args.fuse

    @property
    def refill(self) -> bool:
        return bool(getattr(self.args, "refill", False))

    def units(self, count: int | None) -> str:
        size = min(self.args.fuse, self.args.num_samples)  # a group never larger than the sweep
        return f"{counted(count, 'group')} of {size}"

    def free_slots_line(self, at_once: int) -> str | None:
        """Configurations that fill fewer groups than the cluster runs at once leave trial slots
        (GPUs, on a GPU cluster) free: say how many, and which --fuse would fill them. None when
        every slot trains, or when --max-concurrent chose the number."""
        args = self.args
        groups = self.tune_trials
        if args.max_concurrent or args.resume or groups >= at_once:
            return None
        fill = max(1, args.num_samples // at_once)
        return (f"slots      {args.num_samples} configurations fill {self.units(groups)}, and the "
                f"cluster runs {at_once} at once: {at_once - groups} slot(s) stay free (--fuse "
                f"{fill} would fill them: smaller groups, each on its own slot)")

    def suggestion(self, members: dict[str, dict]) -> dict:
        return {MEMBERS_KEY: list(members.values()), MEMBER_IDS_KEY: list(members)}

    def tell(self, study, trial_id: str, result: dict, ended: bool = False, error: bool = False):
        # A group's end tells the study how each of its members ended (a failed group: they failed)
        from sweeps.study import member_results

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


def counted(count: int | None, noun: str) -> str:
    return f"{noun}s" if count is None else f"{count} {noun}{'' if count == 1 else 's'}"


def best_table(rows: list[dict], metric: str, mode: str) -> str:
    """The best TABLE_ROWS configurations by their last value of `metric`; a failed or unfinished
    (interrupted) one is never among them."""
    import pandas as pd

    if not rows:
        return "no trial reported a result"
    frame = pd.DataFrame(rows)
    usable = frame[(frame["ended"] == OK) & pd.to_numeric(frame[metric], errors="coerce").notna()]
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
