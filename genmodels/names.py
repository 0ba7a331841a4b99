"""Every name that more than one module must agree on, in one place: the metrics and their better
directions, the files a run or a sweep writes, the MLflow tags, the default tracking store.

Plain data and the standard library only, so `analysis/`, `--print-space` and `--help` read it
without importing torch, Ray or MLflow.

    python -c "from genmodels import names; print(names.OBJECTIVES)"
"""

from __future__ import annotations

import os
from pathlib import Path

# ---- metrics -----------------------------------------------------------------------------------
# Every epoch (every --eval-every) a run is measured on its validation split: `val_*`, what a sweep,
# its scheduler and its ranking choose by. The test split is measured once, after training, for
# `genmodels.train` runs and for the best few trials of a sweep: `test_*`, reported, never chosen by.
_SCORES = {"elbo": "max", "recon": "max", "iwae": "max", "fcd": "min", "inception_score": "max",
           "precision": "max", "recall": "max"}
# metric -> "max" | "min" for the metrics that have a better direction. Metrics not named here
# (the KL terms, the GAN's losses and D outputs, timings) are diagnostics: a final value only.
DIRECTIONS: dict[str, str] = {
    **{f"val_{k}": d for k, d in _SCORES.items()},
    **{f"test_{k}": d for k, d in _SCORES.items()},
    "train_loss": "min",
}
# The metrics each model reports every evaluation; the first is the default objective.
MODEL_METRICS: dict[str, tuple[str, ...]] = {
    "vae": ("val_elbo", "val_recon", "val_kl", "train_loss"),
    "gan": ("val_fcd", "val_inception_score", "val_inception_score_std", "val_precision",
            "val_recall", "loss_d", "loss_g", "d_real", "d_fake"),
}
# ... and once, on the test split, after training.
TEST_METRICS: dict[str, tuple[str, ...]] = {
    "vae": ("test_elbo", "test_recon", "test_kl", "test_iwae"),
    "gan": ("test_fcd", "test_inception_score", "test_inception_score_std", "test_precision",
            "test_recall"),
}
# What a sweep may optimize (--metric); the first is the default. Validation metrics only.
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "vae": ("val_elbo",),
    "gan": ("val_fcd", "val_inception_score"),
}


def on_test_split(metric: str) -> str | None:
    """The test split's version of a validation metric (val_elbo -> test_elbo), if there is one."""
    if not metric.startswith("val_"):
        return None
    name = "test_" + metric[len("val_"):]
    return name if name in DIRECTIONS else None


TIMING_METRICS = ("train_seconds", "epoch_seconds")

# ---- statuses ----------------------------------------------------------------------------------
# A trial's or run's end. A usable one ran as asked (ASHA stopping it early is a normal end).
FINISHED, STOPPED_EARLY, FAILED, DIVERGED, UNFINISHED = (
    "finished", "stopped_early", "failed", "diverged", "unfinished")
USABLE = (FINISHED, STOPPED_EARLY)
STATUSES = (FINISHED, STOPPED_EARLY, FAILED, DIVERGED, UNFINISHED)

# ---- files -------------------------------------------------------------------------------------
CHECKPOINT_FILE = "checkpoint.pt"  # Trainer.save_checkpoint: weights, optimizers, RNG, history
STATUS_FILE = "status.json"  # how a run or trial ended: genmodels.files.write_status
OPTIONS_FILE = "gensweep_options.json"  # a sweep's own options, in its folder; --resume reuses them
LOCK_FILE = ".gensweep.lock"  # in a sweep's folder, held by its driver: one driver per sweep
TEST_METRICS_FILE = "test_metrics.json"  # a run's or a chosen trial's test numbers, once
PLACEMENT_FILE = "placement.json"  # where a trial ran: node, GPU ids, device
MODEL_WEIGHTS_FILE = "weights.pt"  # a trained model's sampling network: its state_dict only
MODEL_CONFIG_FILE = "model.json"  # ... and what rebuilds it: {"model", "model_config", "format"}
SWEEP_LOG_FILE = "sweep.log"  # Ray's and MLflow's own output during a sweep, in its folder
SAMPLED_FILE = "sampled.json"  # how each configuration was chosen (SAMPLED_KINDS), in a sweep's folder

# ---- MLflow tags -------------------------------------------------------------------------------
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: a trial's run -> the sweep's run
# MLflow's own experiment tag choosing the UI's layout: model training (runs, charts), not the GenAI
# view (traces, evaluations) that MLflow 3 infers for an experiment without it.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # MLflow's own: a run's description, shown on its page
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own
SWEEP_DIR_TAG = "gensweep.sweep_dir"  # on the parent run: the sweep's Ray results folder
SWEEP_TAG = "gensweep.sweep"  # on every trial's run: the sweep's name
MODEL_TAG = "gensweep.model"  # vae | gan, on every run
STATUS_TAG = "gensweep.status"  # one of STATUSES, on a trial's run once it ends
FAILURE_TAG = "gensweep.failure_reason"  # why a trial failed or diverged
TRIAL_ID_TAG = "ray.trial_id"  # finds a trial's run again when the trial is restored
TRIAL_DIR_TAG = "ray.trial_dir"  # the trial's folder in the sweep's storage
NODE_TAG = "ray.node_id"
GROUP_TAG = "gensweep.group"  # a fused member's run: its group's Ray trial (--fuse)
SAMPLED_TAG = "gensweep.sampled"  # how a trial's configuration was chosen: one of SAMPLED_KINDS

# ---- how a configuration was chosen (sweeps/sampling.py) ----------------------------------------
# The seed's default (a sweep's first trial), TPE's random start-up, or TPE's guess from the
# configurations that had ended when it was asked.
DEFAULT_SAMPLED, RANDOM_SAMPLED, GUIDED_SAMPLED = "default", "random", "guided"
SAMPLED_KINDS = (DEFAULT_SAMPLED, RANDOM_SAMPLED, GUIDED_SAMPLED)

# ---- fused sweeps (--fuse K): a group's Tune config and reports ---------------------------------
MEMBERS_KEY = "members"  # the trial config's list of member configs
MEMBER_IDS_KEY = "member_ids"  # ... and their names (m000, m001, ...: one per configuration)
MEMBER_RESULTS_KEY = "member_results"  # in each report: member id -> its latest metrics, status
RUNNING = "running"  # a member still training, in MEMBER_RESULTS_KEY (its ends are STATUSES)
# in each report: member id -> config of the members that refilled a freed slot in the group
ADDED_MEMBERS_KEY = "added_members"


def group_members(config: dict, reports: list[dict]) -> list[tuple[str, dict]]:
    """Every configuration a fused group trained, as (member id, its sampled values): those it
    started with (its Tune config) and those that later took the slots of members that ended
    (each report names the refills that joined after its epoch; a group's last report, once it
    has ended, names them all)."""
    added: dict[str, dict] = {}
    for report in reports:
        added.update((report or {}).get(ADDED_MEMBERS_KEY) or {})
    return [*zip(config.get(MEMBER_IDS_KEY, []), config.get(MEMBERS_KEY, [])), *added.items()]

# ---- environment -------------------------------------------------------------------------------
DATA_DIR_ENV = "GENSWEEP_DATA_DIR"  # default --data-dir
CACHE_ENV = "GENSWEEP_CACHE_DIR"  # default --cache-dir of the scoring classifier

# ---- tracking ----------------------------------------------------------------------------------
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_STORE = "mlflow.db"  # SQLite in the working folder, artifacts in mlruns/ beside it


def tracking_uri(option: str | None = None) -> str:
    """Where runs are recorded: `option` (--mlflow-uri), else $MLFLOW_TRACKING_URI, else
    ./mlflow.db, so `mlflow ui` in the same folder shows the sweep with no server."""
    uri = option or os.environ.get(TRACKING_URI_ENV)
    return uri or f"sqlite:///{Path.cwd().resolve() / DEFAULT_STORE}"
