"""What a sweep prints, and where the libraries' own output goes instead.

A sweep prints its resolved setup, one line per trial event (started, each epoch's objective,
retrying after a failure and restarted, finished / stopped early / failed or diverged with the
reason), a summary line (done, running, pending, the best
so far, elapsed, an estimate of what remains) every `SUMMARY_EVERY_SECONDS` when trials moved on, or
every `QUIET_SUMMARY_SECONDS` as a sign of life while long epochs run, and the final table.
Ray's, MLflow's and Optuna's own log records and Python warnings go to `sweep.log` in the sweep's
folder, where they are kept for a look when something goes wrong.

No Ray here: `sweeps/callbacks.py` feeds Tune's events to `Progress`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from genmodels.names import (
    ADDED_MEMBERS_KEY,
    DIVERGED,
    FAILED,
    MEMBER_IDS_KEY,
    MEMBER_RESULTS_KEY,
    MEMBERS_KEY,
    RUNNING,
)
from sweeps.options import gpu_defaults_line
from sweeps.search_space import (
    budget_split,
    default_point,
    outside_space,
    startup_trials,
    units_at_once,
)

LIBRARY_LOGGERS = ("ray", "mlflow", "optuna", "alembic", "py.warnings")
SUMMARY_EVERY_SECONDS = 30
QUIET_SUMMARY_SECONDS = 300
REASON_CHARS = 160  # a failure's reason on the console; the whole text is in the trial's error.txt
LIBRARY_ENV = {
    # Tune's own progress tables: off, `Progress` prints the lines we want (Tune's RunConfig
    # verbose=0 keeps the old reporter silent, and this keeps the new one off).
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune warns when a forced experiment-state snapshot follows another within seconds: that is
    # CheckpointConfig(num_to_keep=1) doing its job (the state on disk always names a checkpoint
    # that still exists, so --resume is exact), and on a local disk a snapshot costs milliseconds.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def send_library_output_to(log_file: Path) -> None:
    """Ray's, MLflow's, Optuna's and Alembic's log records, and Python warnings, go to `log_file`
    instead of the console. Call after importing them (each installs its own console handler on
    import) and before starting Ray."""
    for name, value in LIBRARY_ENV.items():
        os.environ.setdefault(name, value)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for previous in logger.handlers:  # an earlier sweep's log, in a process that runs several
            if isinstance(previous, logging.FileHandler):
                previous.close()
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.captureWarnings(True)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def short_config(config: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in config.items())


class Progress:
    """The sweep's console lines, from trial events; `now` is injectable for tests.

    In a fused sweep (`configurations` given) Tune's trials are groups: the lines also speak of
    the configurations, each named as the analysis names it, `<group>-<member>`."""

    def __init__(self, num_trials: int, epochs: int, metric: str, mode: str, now=time.monotonic,
                 configurations: int | None = None):
        self.num_trials, self.epochs, self.metric, self.mode = num_trials, epochs, metric, mode
        self.configurations = configurations
        self.members: dict[str, dict[str, str]] = {}  # a fused sweep's group -> member -> status
        self.member_epochs: dict[str, int] = {}  # '<group>-<member>' -> its last reported epoch
        self.now = now
        self.started_at = now()
        self.last_summary = self.started_at
        self.running: set[str] = set()
        self.done: dict[str, str] = {}  # trial id -> finished | stopped_early | failed | diverged
        self.retried: set[str] = set()  # trials Tune restarted after a failure (--max-failures)
        # Each trial's latest value, the best of which the summary names: the closing table and
        # analysis/rank.py rank trials by their last value too, as Ray Tune's best result does.
        self.latest: dict[str, float] = {}
        self.events_since_summary = 0
        self.done_before = 0  # trials that had ended before this --resume: not in the time estimate
        self.configurations_before = 0  # ... and a fused sweep's configurations

    def __setstate__(self, state: dict) -> None:
        """Tune pickles the callbacks with the Tuner: a --resume restores this object in a new
        process, whose clock starts now."""
        self.__dict__.update(state)
        self.started_at = self.last_summary = self.now()

    def say(self, text: str) -> None:
        print(f"[{clock(self.now() - self.started_at)}] {text}", flush=True)

    def event(self, text: str) -> None:
        self.events_since_summary += 1
        self.say(text)

    def started(self, trial_id: str, config: dict) -> None:
        self.running.add(trial_id)
        if trial_id in self.retried:
            self.event(f"{trial_id} restarted  from its last checkpoint")
        elif MEMBER_IDS_KEY in config:  # a fused group: a line per configuration, named as a trial
            for member, values in zip(config[MEMBER_IDS_KEY], config[MEMBERS_KEY]):
                self.event(f"{trial_id}-{member} started    {short_config(values)}")
        else:
            self.event(f"{trial_id} started    {short_config(config)}")

    def retrying(self, trial_id: str, reason: str) -> None:
        """Its worker or node died, or it raised: Tune restarts it (up to --max-failures)."""
        self.running.discard(trial_id)
        self.retried.add(trial_id)
        self.event(f"{trial_id} retrying   after {reason[:REASON_CHARS]}")

    def epoch(self, trial_id: str, epoch: int, result: dict) -> None:
        if MEMBER_RESULTS_KEY in result:
            self.group_epoch(trial_id, epoch, result[MEMBER_RESULTS_KEY])
            self.refills(trial_id, result.get(ADDED_MEMBERS_KEY) or {})
            return
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4g}" if isinstance(value, (int, float)) else "no score"
        self.event(f"{trial_id} epoch {epoch}/{self.epochs}  {shown}")
        self.consider(value, trial_id)

    def group_epoch(self, group: str, epoch: int, members: dict) -> None:
        """A fused group's epoch: the best of the members that trained it (each at its own epoch:
        members that refilled a slot joined later), each member a candidate for the best so far
        under its own trial id. The group's epochs run on as long as refills join it."""
        values = {}
        for member, result in members.items():
            self.members.setdefault(group, {})[member] = result.get("status", RUNNING)
            trial_id, value, own_epoch = f"{group}-{member}", result.get(self.metric), result.get("epoch")
            trained = own_epoch is not None and own_epoch != self.member_epochs.get(trial_id)
            self.member_epochs[trial_id] = own_epoch
            if result.get("status") in (DIVERGED, FAILED):
                self.latest.pop(trial_id, None)  # ranked last, whatever it scored before
            elif trained and isinstance(value, (int, float)) and math.isfinite(value):
                values[trial_id] = value
        for trial_id, value in values.items():
            self.consider(value, trial_id)
        if values:
            pick = max if self.mode == "max" else min
            best = pick(values, key=values.get)
            shown = (f"{self.metric} {values[best]:.4g} ({best}, the best of "
                     f"{len(values)} member{'' if len(values) == 1 else 's'})")
        else:
            shown = "no score"
        self.event(f"{group} epoch {epoch}  {shown}")

    def refills(self, group: str, added: dict[str, dict]) -> None:
        """A line per configuration that took the slot of a member that ended."""
        for member, values in added.items():
            if member not in self.members.setdefault(group, {}):
                self.members[group][member] = RUNNING
                self.event(f"{group}-{member} started    {short_config(values)} (refills a slot)")

    def consider(self, value, trial_id: str) -> None:
        """`value` is now the trial's latest: a candidate for the best unless it is no number."""
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.latest[trial_id] = value
        else:
            self.latest.pop(trial_id, None)

    @property
    def best(self) -> tuple[float, str] | None:
        """(value, trial id) of the trial whose latest value is the best, ties to the first."""
        if not self.latest:
            return None
        pick = max if self.mode == "max" else min
        trial_id = pick(self.latest, key=self.latest.get)
        return self.latest[trial_id], trial_id

    def outcome(self, epochs_done: int, reason: str | None) -> str:
        if reason is not None:
            # TrainingDiverged, or TrialDivergedBefore for a diverged trial's retry
            return "diverged" if "Diverged" in reason else "failed"
        return "stopped_early" if epochs_done < self.epochs else "finished"

    def ended(self, trial_id: str, epochs_done: int, reason: str | None = None) -> None:
        self.running.discard(trial_id)
        outcome = self.done[trial_id] = self.outcome(epochs_done, reason)
        if reason is not None:
            self.latest.pop(trial_id, None)  # a trial that failed or diverged ranks last
        members = self.members.get(trial_id, {})
        for member, status in members.items():  # a group that failed: its members with it
            if status == RUNNING:
                members[member] = outcome
                if reason is not None:
                    self.latest.pop(f"{trial_id}-{member}", None)
        how_members_ended = self.member_outcomes(trial_id)
        if reason is None and how_members_ended:  # a group
            self.event(f"{trial_id} ended      after epoch {epochs_done}: {how_members_ended}")
        elif reason is not None:
            self.event(f"{trial_id} {outcome:<10} {reason[:REASON_CHARS]}")
        elif outcome == "stopped_early":
            self.event(f"{trial_id} stopped early after epoch {epochs_done} (ASHA)")
        else:
            self.event(f"{trial_id} finished   after {epochs_done} epoch{'' if epochs_done == 1 else 's'}")

    def member_outcomes(self, group: str) -> str:
        """How a group's members stand, e.g. "1 finished, 2 stopped early"; "" for a plain trial."""
        statuses = list(self.members.get(group, {}).values())
        counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
        return ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())

    def ended_before(self, trial_id: str, epochs_done: int, reason: str | None, last,
                     members: dict | None = None) -> None:
        """A trial that had ended before this --resume (the run that ran it printed its lines): it
        counts as done, and its `last` value as a candidate for the best so far, without a line. A
        group's `members` (its last report's) count too, each with its last value."""
        if trial_id in self.done:
            return
        self.done[trial_id] = self.outcome(epochs_done, reason)
        self.done_before += 1
        if not members and reason is None:
            self.consider(last, trial_id)
        for member, result in (members or {}).items():
            status = result.get("status", RUNNING)
            self.members.setdefault(trial_id, {})[member] = status
            self.configurations_before += status != RUNNING
            if status not in (DIVERGED, FAILED) and (status != RUNNING or reason is None):
                self.consider(result.get(self.metric), f"{trial_id}-{member}")

    def maybe_summary(self) -> None:
        since = self.now() - self.last_summary
        if since >= QUIET_SUMMARY_SECONDS or (since >= SUMMARY_EVERY_SECONDS
                                              and self.events_since_summary):
            self.summary()

    def summary(self) -> None:
        self.last_summary, self.events_since_summary = self.now(), 0
        elapsed = self.now() - self.started_at
        best = (f"best {self.metric} {self.best[0]:.4g} ({self.best[1]})" if self.best
                else f"no {self.metric} yet")
        if self.configurations:  # a fused sweep: Tune's trials are groups, and refills make them
            # fewer than --num-samples / --fuse, so the sweep counts its configurations
            total, before = self.configurations, self.configurations_before
            done = sum(status != RUNNING for members in self.members.values()
                       for status in members.values())
            counts = (f"groups {len(self.done)} done, {len(self.running)} running; {done} of {total} "
                      "configurations ended")
        else:
            total, before, done = self.num_trials, self.done_before, len(self.done)
            pending = max(0, total - done - len(self.running))
            counts = f"{done} done, {len(self.running)} running, {pending} pending"
        # Those ended in this run took elapsed / ended each, in parallel slots: a rough but honest
        # estimate (those that had ended before a --resume took none of this run's time).
        ended = done - before
        left = f"~{clock(elapsed / ended * (total - done))} left" if 0 < ended and \
            done < total else ("done" if done >= total else "? left")
        self.say(f"{counts}; {best}; {clock(elapsed)} elapsed, {left}")


def reason_of(error_file: str | None) -> str:
    """The last line of a trial's error.txt (the exception and its message)."""
    if not error_file or not Path(error_file).exists():
        return "trial error (no error file)"
    lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "trial error"


def setup_lines(plan) -> str:
    """The resolved sweep, printed before anything runs. `plan`: the runner's SweepPlan."""
    a = plan.args
    data = f"{a.dataset} from {a.data_dir or 'the default data folder'}" + (
        f", first {a.train_subset} training images" if a.train_subset else "")
    at_once = a.max_concurrent or "as many as fit"
    scheduler = (f"ASHA (grace {a.grace_period} epoch(s), max {a.epochs})" if a.scheduler == "asha"
                 else "FIFO (every trial runs all epochs)")
    lines = [
        f"sweep      {a.name}: {a.num_samples} {plan.model.upper()} trials x {a.epochs} "
        f"epoch{'' if a.epochs == 1 else 's'}, "
        f"{at_once} at once, {a.cpus_per_trial:g} CPU / {a.gpus_per_trial:g} GPU each"
        + (" (--smoke)" if a.smoke else ""),
        f"objective  {a.metric} ({'higher' if plan.mode == 'max' else 'lower'} is better), "
        f"{scheduler}",
        f"search     {search_line(plan)}",
        f"data       {data}; batch {a.batch_size}, {a.precision}",
        f"results    {plan.experiment}" + (" (resumed)" if a.resume else ""),
        f"MLflow     {plan.mlflow_uri}",
        f"log        {plan.log_file} (Ray's and MLflow's own messages)",
    ]
    defaults = gpu_defaults_line(a)
    if defaults:
        lines.insert(1, defaults)
    return "\n".join(lines)


def trials_at_once(args) -> int | None:
    """Trials (or fused groups) running together: --max-concurrent, else what a local Ray's CPUs
    hold; None where that is not known before Ray starts (a cluster, GPU trials)."""
    if args.max_concurrent:
        return args.max_concurrent
    if args.address or args.gpus_per_trial > 0:
        return None
    return max(1, int((os.cpu_count() or 1) // args.cpus_per_trial))


def search_line(plan) -> str:
    """How the sweep's configurations are chosen, e.g. "Optuna TPE (seed 0): trial 1 the default,
    3 random start-up, 12 guided (random until 4 configurations have ended; 1 trial at once)."
    Derived from TPE's start-up count (sweeps/search_space.py, budget_split)."""
    a = plan.args
    default_first = not getattr(a, "no_default_first", False)
    skipped = ""
    if default_first and default_point(plan.model, plan.space) is None:
        default_first = False
        skipped = (" The default configuration is not run first: "
                   + "; ".join(outside_space(plan.model, plan.space)) + " of the search space.")
    startup, sweep = startup_trials(a.num_samples), plan.sweep
    at_once = trials_at_once(a)
    if at_once:
        at_once = units_at_once(at_once, a.num_samples, sweep.group_size)
    split = budget_split(a.num_samples, default_first, startup, at_once or 1, sweep.group_size,
                         sweep.refill)
    ran = f"{sweep.units(at_once)} at once" if at_once else f"more when {sweep.units(None)} run at once"
    if sweep.refill and a.num_samples > min(sweep.group_size, a.num_samples) * (at_once or 1):
        ran += ", each slot refilled as its member ends"
    return (f"Optuna TPE (seed {a.seed}): {split.describe()} (random until {startup} "
            f"configurations have ended; {ran}).{skipped}")
