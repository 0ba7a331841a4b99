"""Trials a killed driver started but never recorded: found once the sweep ends, and set aside.

Tune saves its experiment state (which trials exist, the searcher's state) every few seconds, not at
every event. A driver killed without warning (SIGKILL, a lost head node) can have started a trial
after its last save: the trial's worker wrote its folder straight into the sweep's storage
(checkpoints, sample grids, `placement.json`) and opened its MLflow run, but the saved state does
not know it. `--resume` restores that older state, the searcher suggests the same configuration
again, and a new trial trains it from the start (seen in `tests/test_faults.py`'s SIGKILL test on a
loaded machine: four trial folders for three configurations). The orphan would be a duplicate:
a folder beside the real trials and an MLflow run closed FAILED beside the real one.

`set_aside_orphans` moves each orphan folder into `<sweep>/orphaned/` (nothing is deleted: its
checkpoints and images stay there; on cloud storage too, see sweeps/storage.py) and deletes its
MLflow runs the way MLflow deletes (a soft delete: `mlflow runs restore --run-id ID` brings one
back), so each configuration shows once.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from genmodels.names import PARENT_RUN_TAG, PLACEMENT_FILE, TRIAL_DIR_TAG
from sweeps.storage import SweepFolder
from trainables.mlflow_trial import SweepRecords, retry

ORPHANS_DIR = "orphaned"


def orphan_folders(experiment: SweepFolder, known: set[str]) -> list[str]:
    """Folders in the sweep's folder that a trial wrote (its `placement.json`) but that no trial of
    the sweep's state owns (`known`: the folder names of the trials Tune knows)."""
    return [name for name in experiment.subfolders()
            if name not in known and name != ORPHANS_DIR
            and experiment.exists(f"{name}/{PLACEMENT_FILE}")]


def orphan_runs(client: MlflowClient, tracking: SweepRecords, folder: str) -> list[str]:
    """The sweep's MLflow runs of the trial folder `folder` (a fused group's: one per member)."""
    prefix = f"{tracking.experiment_dir}/{folder}"
    query = (f"tags.`{PARENT_RUN_TAG}` = '{tracking.parent_run_id}' "
             f"and tags.`{TRIAL_DIR_TAG}` LIKE '{prefix}%'")
    runs = retry(lambda: client.search_runs([tracking.experiment_id], filter_string=query))
    # LIKE's _ matches any character: keep the exact folder and its members' subfolders only
    return [r.info.run_id for r in runs
            if r.data.tags[TRIAL_DIR_TAG] == prefix or r.data.tags[TRIAL_DIR_TAG].startswith(prefix + "/")]


def set_aside_orphans(experiment: SweepFolder, known: set[str],
                      tracking: SweepRecords) -> list[str]:
    """Move every orphan folder into `<experiment>/orphaned/` and delete its MLflow runs; the names
    of the folders set aside."""
    orphans = orphan_folders(experiment, known)
    client = MlflowClient(tracking.uri)
    for folder in orphans:
        for run_id in orphan_runs(client, tracking, folder):
            retry(lambda r=run_id: client.delete_run(r))
        experiment.move(folder, f"{ORPHANS_DIR}/{folder}")
    return orphans
