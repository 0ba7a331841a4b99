"""Read Ray Tune's results folder of a sweep as files, with no Ray process.

`params.json`, the JSON-lines `result.json`, the trainable's `status.json`, Ray's `error.txt` and the
newest `experiment_state-*.json` (for the trial statuses) are all plain files, so a folder copied off
a cluster reads the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from genmodels.files import read_status
from genmodels.names import (
    CHECKPOINT_FILE,
    DIVERGED,
    FAILED,
    FINISHED,
    MEMBER_IDS_KEY,
    MEMBER_RESULTS_KEY,
    MODEL_CONFIG_FILE,
    OPTIONS_FILE,
    SAMPLED_FILE,
    STOPPED_EARLY,
    TEST_METRICS_FILE,
    UNFINISHED,
    group_members,
)
from results.table import ERROR_CHARS, LoadError, TrialRecord

# Fields Ray Tune adds to every reported result: not metrics of the model.
RAY_RESULT_FIELDS = {
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
    "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "epoch", "experiment_tag", "episodes_total",
    "timesteps_total", "timesteps_since_restore", "warmup_time",
}
ERROR_FILE = "error.txt"  # written by Ray for a trial that raised

EXPERIMENT_STATE_PREFIX = "experiment_state-"  # Tune's record of its trials, saved as it runs


def read_json_lines(path: Path) -> list[dict]:
    """result.json; a last line cut short by a killed trial is skipped, not fatal."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_test_metrics(folder: Path) -> dict[str, float]:
    """The test split's numbers of a chosen trial (written by the sweep at its end), if any."""
    path = folder / TEST_METRICS_FILE
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}
    return {k: float(v) for k, v in saved.items() if k.startswith("test_")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def ray_statuses(folder: Path) -> dict[str, str]:
    """Trial folder name -> Ray's status (TERMINATED, ERROR, RUNNING, PENDING, PAUSED), from the
    newest experiment state Tune saved in the sweep's `folder`."""
    states = sorted(folder.glob(f"{EXPERIMENT_STATE_PREFIX}*.json"))
    return statuses_in_state(states[-1].read_text()) if states else {}


def statuses_in_state(text: str) -> dict[str, str]:
    """Trial folder name -> Ray's status, from the text of an experiment_state file (plain JSON;
    the pickled parts are not needed); {} for a file that is not one."""
    try:
        trials = [json.loads(entry[0]) for entry in json.loads(text)["trial_data"]]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        return {}
    return {t.get("relative_logdir", ""): t.get("status", "") for t in trials}


def trial_status(status_file: dict, error: bool, ray_status: str | None, epochs: int,
                 target_epochs: int | None) -> str:
    if status_file.get("status") == DIVERGED:
        return DIVERGED
    if error or ray_status == "ERROR":
        return FAILED
    if status_file.get("status") == FINISHED:
        return FINISHED
    if ray_status in ("RUNNING", "PENDING", "PAUSED"):
        return UNFINISHED  # the sweep was interrupted; --resume continues it
    if target_epochs is not None and epochs >= target_epochs:
        return FINISHED
    return STOPPED_EARLY  # ended by the scheduler before the last epoch


def read_ray_trial(folder: Path, ray_status: str | None, target_epochs: int | None) -> TrialRecord:
    rows = read_json_lines(folder / "result.json")
    config = json.loads((folder / "params.json").read_text()) if (folder / "params.json").exists() \
        else (rows[-1].get("config", {}) if rows else {})
    history = [{"epoch": int(row.get("epoch", row.get("training_iteration"))),
                **{k: v for k, v in row.items()
                   if k not in RAY_RESULT_FIELDS and isinstance(v, (int, float))
                   and not isinstance(v, bool)}}
               for row in rows]
    status_file = read_status(folder)
    error_path = folder / ERROR_FILE
    epochs = max((h["epoch"] for h in history), default=0)
    status = trial_status(status_file, error_path.exists(), ray_status, epochs, target_epochs)
    error = None
    if status == DIVERGED:
        error = status_file.get("message") or DIVERGED
    elif error_path.exists():
        lines = [line for line in error_path.read_text().splitlines() if line.strip()]
        error = lines[-1] if lines else "failed"
    trial_id = rows[-1]["trial_id"] if rows and "trial_id" in rows[-1] else folder.name.split("_")[2]
    return TrialRecord(trial_id=str(trial_id), status=status, config=config, history=history,
                       figures_dir=str(folder.resolve()),
                       error=error[:ERROR_CHARS] if error else None,
                       test=read_test_metrics(folder))


def read_fused_group(folder: Path, config: dict, rows: list[dict],
                     ray_status: str | None) -> list[TrialRecord]:
    """A fused group's folder (--fuse K): one record per member, as an unfused trial's. Each
    report holds the latest values of the members that trained its epoch or ended in it, under
    `member_results` (sweeps/study.py)."""
    group_id = rows[-1]["trial_id"] if rows and "trial_id" in rows[-1] else folder.name.split("_")[-1]
    records = []
    # the members it started with, and those that refilled the slots of members that ended
    for member, values in group_members(config, rows):
        history = {}
        for row in rows:
            reported = (row.get(MEMBER_RESULTS_KEY) or {}).get(member)
            if reported and "epoch" in reported:
                history[int(reported["epoch"])] = {
                    "epoch": int(reported["epoch"]),
                    **{k: v for k, v in reported.items() if k != "epoch"
                       and isinstance(v, (int, float)) and not isinstance(v, bool)}}
        status_file = read_status(folder / member)
        status = status_file.get("status")
        if status is None:
            status = UNFINISHED if ray_status in ("RUNNING", "PENDING", "PAUSED", None) else FAILED
        error = status_file.get("message") if status == DIVERGED else None
        records.append(TrialRecord(trial_id=f"{group_id}-{member}", status=status, config=values,
                                   history=[history[e] for e in sorted(history)],
                                   figures_dir=str((folder / member).resolve()),
                                   error=error[:ERROR_CHARS] if error else None,
                                   test=read_test_metrics(folder / member)))
    return records


def trial_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and ((p / "params.json").exists() or (p / "result.json").exists()))


def read_ray_folder(results: str | Path) -> tuple[list[TrialRecord], dict]:
    folder = Path(results).expanduser()
    if not folder.is_dir():
        raise LoadError(f"no sweep folder {folder}: pass the sweep's folder, "
                        "<--storage-path>/<--name> (default runs/sweeps/<model>-sweep)")
    trials = trial_folders(folder)
    if not trials:
        raise LoadError(f"{folder} holds no trial folders (train_trial_*/ with params.json); pass "
                        "the sweep's folder, <--storage-path>/<--name>, not its parent or a trial")
    options_path = folder / OPTIONS_FILE
    options = json.loads(options_path.read_text()) if options_path.exists() else {}
    statuses = ray_statuses(folder)
    records = []
    for trial in trials:
        config = json.loads((trial / "params.json").read_text()) if (trial / "params.json").exists() else {}
        if MEMBER_IDS_KEY in config:
            rows = read_json_lines(trial / "result.json")
            records += read_fused_group(trial, config, rows, statuses.get(trial.name))
        else:
            records.append(read_ray_trial(trial, statuses.get(trial.name), options.get("epochs")))
    # How each configuration was chosen, as the sweep recorded it at its end (sweeps/sampling.py)
    sampled_path = folder / SAMPLED_FILE
    sampled = json.loads(sampled_path.read_text()) if sampled_path.exists() else {}
    for record in records:
        record.sampled = sampled.get(record.trial_id)
    return records, options


def trained_model(folder: Path) -> Path | None:
    """A trial's trained model: a fused member's exported files, or the newest checkpoint."""
    if (folder / MODEL_CONFIG_FILE).exists():
        return folder
    checkpoints = sorted(folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    return checkpoints[-1] if checkpoints else None


def local_trial_folder(figures_dir: str, cache: Path, suffixes: tuple[str, ...] = (".png",)) -> Path:
    """A trial's folder on this disk, for its figures (or its files of other `suffixes`): the
    folder itself, or for a sweep on cloud storage (`figures_dir` a URI) a copy of the trial's
    files in `cache`, downloaded once. A storage this machine cannot read (no credentials here,
    say) gives an empty folder: the caller falls back to the trial's MLflow run."""
    if "://" not in figures_dir:
        return Path(figures_dir)
    copy = cache / figures_dir.rstrip("/").rsplit("/", 1)[-1]
    silent = cache / ".storage-silent"  # one wait for a store that never answers, not one a trial
    if not copy.exists() and not silent.exists():
        from sweeps.storage import SweepFolder

        try:
            SweepFolder.reached(figures_dir).download(cache, suffixes)
        except TimeoutError:
            silent.parent.mkdir(parents=True, exist_ok=True)
            silent.touch()
        except (OSError, ValueError):  # pyarrow's: unreachable, denied, not found, bad URI
            pass
    copy.mkdir(parents=True, exist_ok=True)
    return copy
