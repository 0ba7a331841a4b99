"""What `sweeps/vae_sweep.py` and `sweeps/gan_sweep.py` share: options, checks, the Tuner, the table.

Order of work, so that mistakes cost seconds and write nothing: parse and validate the options and
the search space, read and check the data set, check the tracking server answers (all before Ray
starts, each a one-line `error: ...` and exit code 2), then take the sweep's lock, start (or join)
Ray, check the resource request fits some node, train or load the scoring classifier once, and run
the trials. Exit codes: EXIT_* below (README, "Faults, exit codes and signals").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from genmodels.data import (
    DATA_DIR_ENV,
    DATASETS,
    DataError,
    ensure_dataset_files,
    load_dataset,
    resolve_data_dir,
)
from genmodels.device import PRECISIONS
from genmodels.fused.gan import GAN_LAYOUTS, MEMBERS
from genmodels.names import (
    DIRECTIONS,
    LOCK_FILE,
    OBJECTIVES,
    OPTIONS_FILE,
    SWEEP_LOG_FILE,
    USABLE,
    tracking_uri,
)
from genmodels.tasks import TASKS
from genmodels.training import TrainConfig
from sweeps import search_space as spaces
from sweeps.console import send_library_output_to, setup_lines
from sweeps.final_test import (
    DEFAULT_TEST_TOP,
    chosen_table,
    log_test_numbers,
    measure_chosen_in,
    scorer_for_test,
)
from sweeps.orphans import ORPHANS_DIR, set_aside_orphans
from sweeps.storage import QUERY_REFUSED, SweepFolder, storage_uri
from sweeps.tracking import (
    TrackingError,
    check_reachable,
    close_sweep,
    open_sweep,
    trials_view_link,
)

# --fuse when not given, on GPUs: where bench/bench_fused.py showed fusing beats packed processes
# (H200, steps as CUDA graphs on both sides, fp32). K = 16: the VAE did 6.2x one trial's
# trial-epochs per hour and 5.8x four packed processes'; the GAN (members' convolutions side by side
# on CUDA streams, the 2026-11-28 round) 1.96x one trial, where four packed processes did 1.00x.
# Larger groups do a bit more (K = 64: VAE 9.0x, GAN 2.07x) but make Optuna ask for that many
# configurations at a time, all but the default at random (bench/RESULTS.md, "Fused trials").
GPU_FUSE = {"vae": 16, "gan": 16}
DEFAULT_EPOCHS, DEFAULT_GRACE_PERIOD = 10, 1
# --epochs and --grace-period of a GAN sweep on GPUs: bench/gan_curve.py on an H200 (bench/RESULTS.md)
# had the seed's GAN at Inception Score 9 on the validation split at epoch 100 (about a minute and a
# half of training there), and configurations separating from epoch 10 on (at epoch 5 a slow starter
# such as the default still scores 1.6), so ASHA's first rung waits until then.
GPU_GAN_EPOCHS, GPU_GAN_GRACE_PERIOD = 100, 10
SMOKE = {  # a sweep that finishes in about a minute on a laptop CPU
    "num_samples": 4, "epochs": 2, "train_subset": 512, "batch_size": 64, "max_concurrent": 2,
    "cpus_per_trial": 1, "eval_samples": 500, "classifier_epochs": 2, "iwae_samples": 5,
    "test_samples": 1000,  # the GAN's test scores of the best --test-top (a real run: 10,000)
}
TABLE_ROWS = 5
TUNER_FILE = "tuner.pkl"  # Tune's saved Tuner in the sweep's folder: a sweep exists once it does
# On --resume the sweep keeps its own options (epochs, data set, space...). Its location and Ray
# address are always this command's; these may be given anew; any other option given with another
# value than the sweep's is an error naming both.
RESUME_CURRENT = ("address", "resume", "storage_path", "name")
RESUME_OVERRIDES = ("max_concurrent", "data_dir", "mlflow_uri", "max_failures", "download")
DEFAULT_MAX_FAILURES = 2  # retries of a trial whose worker or node died, from its last checkpoint

EXIT_OK = 0  # every requested trial finished, or was stopped early by the scheduler
EXIT_BAD_INPUT = 2  # an option, the data, the tracking server, or the sweep already running
EXIT_TRIALS_FAILED = 3  # the sweep ended, but some trials failed or diverged
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, Ctrl-C: unfinished trials resumable, runs KILLED
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, SIGTERM (`timeout`, a cluster scheduler): the same


class SweepError(RuntimeError):
    """A problem found before any trial starts; the message says how to fix it."""


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are our one-line `error: ...` (exit 2), not usage + a second line."""

    def error(self, message: str):
        raise SweepError(f"{message} (see --help)")


def build_parser(model: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"python sweeps/{model}_sweep.py",
                                description=f"Hyperparameter sweep of the {model.upper()} on Ray "
                                            "Tune, searched with Optuna (TPE).")
    metrics = list(OBJECTIVES[model])
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. 'auto' after `ray start --head`); default: "
                        "start a local Ray")
    p.add_argument("--num-samples", type=int, default=16, help="trials to run (default 16)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: as many as the cluster's nodes hold when the "
                        "sweep starts; on an autoscaling cluster give the most you want, since "
                        "Tune only asks for resources of trials under this limit)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per trial (ASHA's max_t; default {DEFAULT_EPOCHS}, a GAN sweep on "
                        f"GPUs {GPU_GAN_EPOCHS}: what the seed's GAN needs to reach IS 9)")
    p.add_argument("--cpus-per-trial", type=float, default=1,
                   help="CPUs per trial; also torch's thread count (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0,
                   help="GPUs per trial, fractions allowed: 0.25 packs four trials on a GPU")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                   help="asha stops poor trials early (default); fifo runs every trial to the end")
    p.add_argument("--grace-period", type=int, default=None,
                   help=f"ASHA: epochs every trial gets before it may be stopped (default "
                        f"{DEFAULT_GRACE_PERIOD}, a GAN sweep on GPUs {GPU_GAN_GRACE_PERIOD})")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    p.add_argument("--data-dir", default=None,
                   help=f"folder with MNIST/raw, FashionMNIST/raw (default ${DATA_DIR_ENV} or ./data)")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download the data set into the data folder if it is "
                        "missing (needs internet; done before Ray starts)")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N images")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="fp32; tf32 (NVIDIA GPUs: fp32 on the tensor cores); bf16 autocast")
    p.add_argument("--storage-path", default="runs/sweeps",
                   help="where Ray keeps results and checkpoints: a local folder, a shared file "
                        "system or a cloud URI (s3://, gs://) for clusters (default runs/sweeps)")
    p.add_argument("--name", default=f"{model}-sweep", help="the sweep's name (its folder)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep --name in --storage-path")
    p.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES,
                   help="times a trial is retried from its last checkpoint after its worker or "
                        f"node died (default {DEFAULT_MAX_FAILURES}; a diverged trial is never "
                        "retried)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler and every trial")
    p.add_argument("--no-default-first", action="store_true",
                   help="do not run the model's default configuration as the first trial")
    p.add_argument("--metric", choices=metrics, default=metrics[0],
                   help=f"objective (default {metrics[0]})")
    p.add_argument("--space", default=None, help="YAML/JSON file overriding search ranges")
    p.add_argument("--print-space", action="store_true", help="print the search space and exit")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking server (http://host:5000) or store URI; default "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder")
    p.add_argument("--fuse", type=int, default=None, metavar="K",
                   help="train K configurations at once as one fused model per trial (each still "
                        "its own Optuna trial, MLflow run and row in the analysis). Default: "
                        f"{GPU_FUSE[model]} on GPUs (--gpus-per-trial > 0), else 1 "
                        "(unfused); see README 'Fused trials'")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny sweep (4 trials x 2 epochs on 512 images) to check a setup; "
                        "its GAN scores come from a classifier trained 2 epochs on those 512 "
                        "images, so they are not comparable with a real sweep's")
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                   help="share of the training images held out as the validation split, a fixed "
                        "seeded choice shared by every trial: the objective is measured on it "
                        f"(default {TrainConfig.val_fraction})")
    p.add_argument("--test-top", type=int, default=DEFAULT_TEST_TOP,
                   help="after the trials, measure the best N by the objective on the test split, "
                        f"once (default {DEFAULT_TEST_TOP}; 0: none)")
    if model == "vae":
        p.add_argument("--test-images", type=int, default=TrainConfig.test_images,
                       help="the final test_elbo's images: a fixed seeded subset of the test split "
                            f"(default {TrainConfig.test_images}: all of it)")
        p.add_argument("--iwae-samples", type=int, default=TrainConfig.iwae_samples,
                       help=f"importance samples K of the final test_iwae (default "
                            f"{TrainConfig.iwae_samples}; 0 skips it; 100 is the literature's)")
        p.add_argument("--iwae-images", type=int, default=TrainConfig.iwae_images,
                       help=f"test_iwae's images, the first of the test_elbo subset (default "
                            f"{TrainConfig.iwae_images}). K=100 on all 10,000 is about a minute "
                            "per tested trial on one CPU thread")
    if model == "gan":
        p.add_argument("--eval-samples", type=int, default=TrainConfig.eval_samples,
                       help="generated images scored per validation")
        p.add_argument("--test-samples", type=int, default=TrainConfig.test_samples,
                       help="generated images scored once on the test split, per tested trial "
                            f"(default {TrainConfig.test_samples})")
        p.add_argument("--classifier-epochs", type=int, default=None,
                       help="epochs of the scoring classifier if it must be trained")
        p.add_argument("--cache-dir", default=None, help="scoring classifier cache")
        p.add_argument("--fused-layout", choices=["auto", *GAN_LAYOUTS], default="auto",
                       help="how a fused group's convolutions run: auto (the measured best for the "
                            "device: streams on CUDA, per-member on a CPU) or one of the others, "
                            "which train the same models (see README 'Fused trials')")
    return p


def parse_options(model: str, argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser(model)
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if hasattr(args, key) and parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    gpu_gan = model == "gan" and args.gpus_per_trial > 0
    if args.fuse is None:
        args.fuse = GPU_FUSE[model] if args.gpus_per_trial > 0 else 1
    if args.epochs is None:
        args.epochs = GPU_GAN_EPOCHS if gpu_gan else DEFAULT_EPOCHS
    if args.grace_period is None:
        args.grace_period = min(GPU_GAN_GRACE_PERIOD if gpu_gan else DEFAULT_GRACE_PERIOD, args.epochs)
    check_options(args)
    return args


def given_options(model: str, argv: list[str] | None) -> set[str]:
    """The options written on the command line (not defaulted): what --resume compares."""
    parser = build_parser(model)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def check_options(args: argparse.Namespace) -> None:
    """Each option's own range, the option named in the message."""
    # epochs before the grace period; a GAN's classifier_epochs is None for the default
    for option in ("num_samples", "epochs", "batch_size", "fuse", "classifier_epochs"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            flag = "--" + option.replace("_", "-")
            raise SweepError(f"{flag} must be a positive integer, got {value}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    if args.train_subset is not None and args.train_subset < 1:
        raise SweepError(f"--train-subset must be a positive integer, got {args.train_subset}")
    val_fraction = getattr(args, "val_fraction", TrainConfig.val_fraction)  # (absent: older sweeps)
    if not 0 < val_fraction < 1:
        raise SweepError(f"--val-fraction is the share of training images held out for validation, "
                         f"between 0 and 1 (exclusive), got {val_fraction}")
    if getattr(args, "test_top", 0) < 0:
        raise SweepError(f"--test-top must be 0 (none) or more, got {args.test_top}")
    if getattr(args, "fused_layout", "auto") != "auto" and args.fuse == 1:
        raise SweepError(f"--fused-layout {args.fused_layout} sets how fused groups run, and this "
                         "sweep's trials are not fused: add --fuse K (K > 1)")
    if getattr(args, "fused_layout", "auto") == MEMBERS and args.gpus_per_trial > 0:
        raise SweepError("--fused-layout members is held back on GPUs: on an H200 it raced (two runs "
                         "of one seed trained different models; bench/RESULTS.md, 2026-11-28), and "
                         "the fix awaits its check on a GPU (bench/check_graphs.py). Leave "
                         "--fused-layout at auto (streams on CUDA) or pick another layout")
    if args.max_failures < 0:
        raise SweepError(f"--max-failures must be 0 (no retry) or more, got {args.max_failures}")
    if args.cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    if not 0 <= args.gpus_per_trial <= 1:
        # A trial (or a fused group) trains on one device: a second GPU would only sit reserved.
        raise SweepError(f"--gpus-per-trial must be in [0, 1], got {args.gpus_per_trial:g}: a trial "
                         "trains on one GPU (0.25 packs four trials on one); to put more of a GPU "
                         "to work, fuse configurations into each trial with --fuse K")
    if args.scheduler == "asha" and not 1 <= args.grace_period <= args.epochs:
        raise SweepError(f"--grace-period must be between 1 and --epochs ({args.epochs}), got "
                         f"{args.grace_period}")
    check_name(args.name)


def check_name(name: str) -> None:
    """The sweep's name is one folder in --storage-path and an MLflow experiment's name."""
    if not name or name == "." or ".." in name or any(sep in name for sep in ("/", "\\", os.sep)):
        raise SweepError(f"--name must be a plain folder name (no '/', '\\' or '..'), got "
                         f"{name!r}; choose where the sweep goes with --storage-path")


def check_local_gpus(args: argparse.Namespace) -> None:
    """A local Ray sees the GPUs torch sees: refuse a GPU request before Ray starts. (On a
    cluster, --address, check_resources asks Ray once joined.)"""
    if args.address or args.gpus_per_trial == 0:
        return
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} asks for GPUs, but this "
                         "machine has none that torch can use; use --gpus-per-trial 0 (CPU) or "
                         "join a GPU cluster with --address")
    if args.gpus_per_trial > count:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} is more than this machine's "
                         f"{count} GPU(s)")


def train_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields shared by every trial (validated here, once, by building one)."""
    settings = {"dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
                "train_subset": args.train_subset, "seed": args.seed, "precision": args.precision}
    for model_specific in ("val_fraction", "eval_samples", "test_samples", "test_images",
                           "iwae_samples", "iwae_images"):
        if hasattr(args, model_specific):  # (val_fraction: absent from sweeps saved before it)
            settings[model_specific] = getattr(args, model_specific)
    try:
        TrainConfig(**settings)
    except ValueError as err:
        raise SweepError(str(err)) from err
    return settings


def live_nodes() -> list[dict]:
    """The resources of each live node of the Ray cluster this process is connected to."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_resources(args: argparse.Namespace) -> dict:
    """Fail now, not with trials pending forever, if no node can ever run one trial."""
    nodes = live_nodes()
    max_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    if args.cpus_per_trial > max_cpus:
        raise SweepError(f"--cpus-per-trial {args.cpus_per_trial:g} is more than any node has "
                         f"(largest: {max_cpus:g} CPUs); lower it")
    if args.gpus_per_trial > 0 and total_gpus == 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} asks for GPUs, but this Ray "
                         "cluster has none; use --gpus-per-trial 0 (CPU) or join a GPU cluster")
    if args.gpus_per_trial > max_gpus:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial:g} is more than any node has "
                         f"(largest: {max_gpus:g} GPUs)")
    return {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}


def trials_the_cluster_holds(args: argparse.Namespace) -> int:
    """How many trials the cluster's live nodes can run at once now: the sweep's concurrency
    unless --max-concurrent says otherwise."""
    held = 0
    for node in live_nodes():
        fits = node.get("CPU", 0) // args.cpus_per_trial
        if args.gpus_per_trial > 0:
            fits = min(fits, node.get("GPU", 0) // args.gpus_per_trial)
        held += int(fits)
    return max(1, held)


def fixed_model_values(model: str, searched: dict) -> dict:
    """The model config's values that are not searched: the dataclass defaults."""
    cfg_class, _ = TASKS[model]
    return {f.name: f.default for f in dataclasses.fields(cfg_class) if f.name not in searched}


# Ray binds its gRPC servers (GCS, raylet, workers) to 127.0.0.1 only when the node's address is
# 127.0.0.1, and picks that address only where it does not expect a multi-machine cluster: Ray's
# Windows/macOS default, which this variable turns on for Linux too. Ray reads it on import.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def keep_local_ray_on_loopback() -> None:
    """A local sweep's Ray (no --address) listens on 127.0.0.1 only, so nothing on the network
    can reach it. Must run before Ray is imported: in a process that imported Ray already (a
    notebook), Ray keeps its default and a user who wants loopback sets the variable first."""
    if "ray" not in sys.modules:
        for name, value in LOOPBACK_ONLY_ENV.items():
            os.environ.setdefault(name, value)


def start_ray(address: str | None) -> None:
    import ray

    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as err:  # ConnectionError, auth errors, timeouts: all mean "can't join"
            raise SweepError(
                f"could not join the Ray cluster at {address!r} ({str(err)[:300]}). Start one with "
                "`ray start --head`, drop --address for a local Ray, and on a cluster with token "
                "authentication set RAY_AUTH_MODE=token with the cluster's ~/.ray/auth_token"
            ) from err
    else:
        # "local": always a fresh Ray of this process, never silently joining a cluster that
        # happens to run on this machine (that is what --address auto is for).
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


def best_table(results, metric: str, mode: str, space: dict) -> str:
    frame = results.get_dataframe()
    if frame.empty or metric not in frame:
        return "no trial reported a result"
    # An errored or unfinished (interrupted) trial's last value is no result: never among the best.
    errored = {r.metrics.get("trial_id") for r in results if r.error}
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    errored |= {t.trial_id for t in trials if t.status != "TERMINATED"}
    frame = frame.assign(ended=["error" if t in errored else "ok" for t in frame.get("trial_id", [])]
                         if "trial_id" in frame else "ok")
    columns = [f"config/{k}" for k in space] + [metric, "training_iteration", "ended"]
    frame = frame[[c for c in columns if c in frame]].rename(
        columns=lambda c: c.removeprefix("config/")).rename(columns={"training_iteration": "epochs"})
    frame = frame[(frame["ended"] == "ok") & frame[metric].notna()]  # the failed are never best
    if frame.empty:
        return "no trial ended with a result"
    frame = frame.drop(columns="ended").sort_values(metric, ascending=mode == "min")
    return frame.head(TABLE_ROWS).to_string(index=False, float_format=lambda v: f"{v:.4g}")


def member_table(results, metric: str, mode: str, space: dict) -> str:
    """A fused sweep's best members: one row per configuration, from each group's last report."""
    import pandas as pd

    from genmodels.names import MEMBER_IDS_KEY as IDS_KEY
    from genmodels.names import MEMBER_RESULTS_KEY as RESULTS_KEY
    from genmodels.names import MEMBERS_KEY

    rows = []
    for result in results:
        config, members = result.config or {}, (result.metrics or {}).get(RESULTS_KEY) or {}
        for member, values in zip(config.get(IDS_KEY, []), config.get(MEMBERS_KEY, [])):
            final = members.get(member, {})
            rows.append({"member": member, **{k: values.get(k) for k in space},
                         metric: final.get(metric), "epochs": final.get("epoch"),
                         "status": final.get("status", "failed")})
    if not rows:
        return "no trial reported a result"
    frame = pd.DataFrame(rows)
    frame = frame[frame["status"].isin(USABLE) & frame[metric].notna()]  # never the failed
    if frame.empty:
        return "no configuration ended with a result"
    frame = frame.sort_values(metric, ascending=mode == "min")
    return frame.head(TABLE_ROWS).to_string(
        index=False, float_format=lambda v: f"{v:.4g}")


def failed_members(results) -> int:
    """A fused sweep's configurations that did not end usable (diverged, failed, or in a group
    that failed): its groups end normally when members diverge, so Tune's errors undercount."""
    from genmodels.names import MEMBER_IDS_KEY, MEMBER_RESULTS_KEY

    failed = 0
    for result in results:
        members = (result.metrics or {}).get(MEMBER_RESULTS_KEY) or {}
        for member in (result.config or {}).get(MEMBER_IDS_KEY, []):
            failed += members.get(member, {}).get("status") not in USABLE
    return failed


def unfinished_trials(results, num_samples: int) -> int:
    """Trials not yet started, or neither terminated nor errored: what a Ctrl-C left for
    --resume (Tune stops gracefully on Ctrl-C and returns the results so far)."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    running = sum(1 for t in trials if t.status not in ("TERMINATED", "ERROR"))
    return running + max(0, num_samples - len(results))


def run(model: str, argv: list[str] | None = None) -> int:
    try:
        return _run(model, argv)
    except (SweepError, TrackingError, DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the cause
        return EXIT_BAD_INPUT


def restore_options(args: argparse.Namespace, given: set[str], experiment: SweepFolder,
                    parser: argparse.ArgumentParser) -> argparse.Namespace:
    """On --resume, the interrupted sweep's own options (data, epochs, space...), so every trial of
    one sweep trains the same way; RESUME_CURRENT and RESUME_OVERRIDES say what may change."""
    if not experiment.exists(OPTIONS_FILE):
        raise SweepError(f"--resume: {experiment.location} has no {OPTIONS_FILE}; it was not "
                         "started by this sweep tool, or never got past its checks")
    options = experiment.read_json(OPTIONS_FILE)
    for key in sorted(given - set(RESUME_CURRENT) - set(RESUME_OVERRIDES)):
        if key in options and options[key] != getattr(args, key):
            flag = "--" + key.replace("_", "-")
            raise SweepError(f"--resume: {flag} {getattr(args, key)!r} differs from the sweep's "
                             f"{options[key]!r}; a resumed sweep keeps its own {flag} (drop it, or "
                             "start a new sweep with another --name)")
    for key in (*RESUME_CURRENT, *RESUME_OVERRIDES):
        if key in RESUME_CURRENT or key in given or key not in options:
            options[key] = getattr(args, key)
    for key, value in vars(args).items():  # options added since the sweep was started
        options.setdefault(key, value if key in given else parser.get_default(key))
    return argparse.Namespace(**options)


def lock_sweep(experiment: Path) -> FileLock:
    """One driver per sweep: a second run or --resume of a running sweep is refused, never run
    twice into one folder. The OS releases the lock when the driver dies, even by SIGKILL."""
    experiment.mkdir(parents=True, exist_ok=True)
    lock = FileLock(experiment / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepError(f"the sweep {experiment.name!r} in {experiment.parent} is running in "
                         "another process (its lock is held); wait for it to end, or stop it and "
                         "--resume") from None
    return lock


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM while the trials run: Tune stops gracefully (saves the
    experiment state, unfinished trials stay resumable), and the exit code says which came.

    Tune's own SIGINT handler stops the run but hides that it did; this one records the signal and
    hands the stop to Tune through SIGUSR1, which Tune registers (same handler) during fit(). A
    second signal, or one before fit() has started, stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.received: int | None = None

    def __enter__(self) -> StopSignals:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        if first and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune: end the run gracefully
            return
        raise KeyboardInterrupt

    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.received == signal.SIGTERM else EXIT_INTERRUPTED

    def __getstate__(self) -> dict:
        # Tune pickles the callbacks that hold this (tuner.pkl); the handlers stay with the process.
        return {"received": None}


@dataclass
class SweepPlan:
    """Everything decided before Ray starts: the options, the search space, where results go."""

    model: str
    args: argparse.Namespace
    space: dict[str, spaces.Range]
    settings: dict  # TrainConfig fields shared by every trial
    storage: str  # Ray's storage: a resolved local folder or a URI
    mlflow_uri: str

    @property
    def experiment(self) -> str:
        """The sweep's own folder (or URI) in the storage."""
        return f"{self.storage}/{self.args.name}"

    @property
    def local(self) -> bool:
        return "://" not in self.storage

    @functools.cached_property
    def folder(self) -> SweepFolder:
        """The sweep's folder, local or on cloud storage, for the sweep's own reads and writes."""
        return SweepFolder(self.experiment)

    @property
    def mode(self) -> str:
        return DIRECTIONS[self.args.metric]

    @property
    def log_file(self) -> Path:
        """Ray's and MLflow's own messages: in the sweep's folder, or here for remote storage."""
        folder = Path(self.experiment) if self.local else Path.cwd()
        return folder / (SWEEP_LOG_FILE if self.local else f"{self.args.name}-{SWEEP_LOG_FILE}")

    @property
    def fixed_values(self) -> dict:
        return fixed_model_values(self.model, self.space)


def _run(model: str, argv: list[str] | None) -> int:
    plan = prepare(model, parse_options(model, argv), given_options(model, argv))
    print(spaces.describe(model, plan.space))
    if plan.args.print_space:
        return EXIT_OK
    data = check_inputs(plan)

    if not plan.args.address:
        keep_local_ray_on_loopback()
    import ray

    from sweeps.tuner import build_tuner  # Ray's side: imported once the checks have passed

    # Up to here nothing was written. A --resume locks its (existing) folder before Ray starts.
    lock = lock_sweep(Path(plan.experiment)) if plan.local and plan.args.resume else None
    stop = StopSignals()
    print(setup_lines(plan), flush=True)
    send_library_output_to(plan.log_file)
    try:
        start_ray(plan.args.address)
        resources = check_resources(plan.args)
        at_once = plan.args.max_concurrent or trials_the_cluster_holds(plan.args)
        if not plan.args.resume:  # kept with the options: the report derives TPE's random share from it
            plan.args.at_once = at_once
        if plan.local and lock is None:
            lock = lock_sweep(Path(plan.experiment))
        save_options(plan)
        data, scorer_cache = load_inputs(plan, data)
        tracking = open_records(plan)
        tuner = build_tuner(plan, data, scorer_cache, tracking, resources, at_once, stop)
        results = fit(plan, tuner, tracking, stop)
        if results is None:
            return stop.exit_code()  # a second signal: the sweep continues with --resume
        return report(plan, results, tracking, stop, data, scorer_cache)
    finally:
        ray.shutdown()
        if lock is not None:
            lock.release()


def prepare(model: str, args: argparse.Namespace, given: set[str]) -> SweepPlan:
    """Resolve --resume and the storage, build and check the search space and the training
    settings: everything that needs neither the data, Ray nor MLflow."""
    storage = storage_uri(args.storage_path)
    experiment = open_storage(storage, args.name)
    if args.resume:
        if not experiment.exists(TUNER_FILE):
            raise SweepError(f"--resume: no sweep {args.name!r} in {storage}; check --name and "
                             "--storage-path")
        args = restore_options(args, given, experiment, build_parser(model))
        check_options(args)
    if not args.resume and experiment.exists(TUNER_FILE):
        raise SweepError(f"a sweep named {args.name!r} already exists in {storage}: pass --resume "
                         "to continue it, or another --name")
    overrides = spaces.load_overrides(args.space) if args.space else None
    space = spaces.search_space(model, overrides)
    # Saved resolved, so a --resume from another folder finds the same data and records.
    args.mlflow_uri = tracking_uri(args.mlflow_uri)
    args.data_dir = str(resolve_data_dir(args.data_dir))
    return SweepPlan(model=model, args=args, space=space, settings=train_settings(args),
                     storage=storage, mlflow_uri=args.mlflow_uri)


def open_storage(storage: str, name: str) -> SweepFolder:
    """The sweep's folder in --storage-path, checked readable now (a cloud URI: its credentials and
    endpoint), not after Ray has started and the trials have failed one by one."""
    if "?" in storage:
        raise SweepError(f"--storage-path {storage}: {QUERY_REFUSED}")
    try:
        experiment = SweepFolder.reached(f"{storage}/{name}")
    except (OSError, ValueError) as err:  # pyarrow's errors: OSError, ArrowInvalid (a ValueError)
        raise SweepError(f"--storage-path {storage}: cannot read it ({' '.join(str(err).split())[:300]}). "
                         "A local folder, or a cloud URI (s3://bucket/path, gs://bucket/path) "
                         "with its credentials set (for S3: AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a server other than "
                         "AWS; for GCS: GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
                         "application-default login`)") from err
    return experiment


def check_inputs(plan: SweepPlan):
    """Before Ray starts, in seconds, writing nothing (but a --download): a GPU request this
    machine cannot meet, the data set (read and checked whole: a missing, empty or truncated file
    is found here, and the trials get this very copy), and the tracking server answering. Returns
    the data."""
    args = plan.args
    check_local_gpus(args)
    # getattr: the options saved by a sweep from before --download existed lack it (--resume)
    ensure_dataset_files(args.dataset, args.data_dir, download=getattr(args, "download", False))
    data = load_dataset(args.dataset, args.data_dir)
    try:  # what every trial trains on: the training images left after the validation split
        available = len(data.hold_out(plan.settings["val_fraction"]).train_images)
    except ValueError as err:
        raise SweepError(f"--val-fraction: {err}") from err
    if args.train_subset is not None and args.train_subset > available:
        raise SweepError(f"--train-subset {args.train_subset} is more than the {available} "
                         f"training images of {args.dataset} left after holding out "
                         f"--val-fraction {plan.settings['val_fraction']} for validation")
    images = min(args.train_subset or available, available)
    if args.batch_size > images:
        raise SweepError(f"--batch-size {args.batch_size} is larger than the {images} training "
                         "images; lower --batch-size or raise --train-subset")
    check_reachable(plan.mlflow_uri)
    return data


def save_options(plan: SweepPlan) -> None:
    """The sweep's options in its folder: what --resume reuses."""
    if not plan.args.resume:
        plan.folder.write_json(OPTIONS_FILE, vars(plan.args))


def open_records(plan: SweepPlan):
    """The sweep's MLflow experiment and parent run (on --resume, the same parent)."""
    args = plan.args
    return open_sweep(plan.mlflow_uri, args.name, plan.model, plan.experiment, vars(args),
                      spaces.describe(plan.model, plan.space), args.resume, plan.mode,
                      tuple(plan.space))


def load_inputs(plan: SweepPlan, data) -> tuple:
    """The data set (loaded once, by check_inputs) and for the GAN the scoring classifier (trained
    once per data set and cached across sweeps); both reach the trials through Ray's object store."""
    args = plan.args
    if plan.model != "gan":
        return data, None
    from genmodels.classifier import EPOCHS, ensure_classifier, load_cache

    scoring_data = data.subset(args.train_subset) if args.smoke else data
    path = ensure_classifier(args.dataset, scoring_data, args.cache_dir,
                             epochs=args.classifier_epochs or EPOCHS)
    return data, load_cache(path)


def fit(plan: SweepPlan, tuner, tracking, stop: StopSignals):
    """Run the trials; None when a second Ctrl-C cut Tune's own stop short (the records are
    closed KILLED). A first Ctrl-C or SIGTERM ends fit() gracefully; `stop` remembers it."""
    args = plan.args
    with stop:
        try:
            return tuner.fit()
        except KeyboardInterrupt:
            close_sweep(tracking, None, interrupted=True, metric=args.metric, mode=plan.mode)
            print(f"interrupted: continue with --resume --name {args.name}", file=sys.stderr)
            return None


def test_chosen_trials(plan: SweepPlan, data, scorer_cache: dict | None):
    """The test split, once, for the best --test-top trials by the validation objective
    (sweeps/final_test.py); the ranked table of every configuration, or None when skipped."""
    args = plan.args
    top = getattr(args, "test_top", DEFAULT_TEST_TOP)  # a sweep saved before --test-top existed
    if top == 0:
        return None
    try:
        ranked = measure_chosen_in(plan.folder, plan.model, args.metric, plan.mode, top, data,
                                   plan.settings, scorer_for_test(scorer_cache))
    except Exception as err:  # the sweep's results are safe; say what is missing
        print(f"warning: could not measure the chosen trials on the test split: {err}",
              file=sys.stderr)
        return None
    print(f"\ntest split, once, for the best {top} by {args.metric} (validation):")
    print(chosen_table(ranked, args.metric, plan.space))
    return ranked


def report(plan: SweepPlan, results, tracking, stop: StopSignals, data=None,
           scorer_cache: dict | None = None) -> int:
    """Close the MLflow records, print the best trials and where everything is; the exit code."""
    args = plan.args
    from sweeps.tuner import tune_trials

    unfinished = unfinished_trials(results, tune_trials(args))
    interrupted = stop.received is not None or unfinished > 0
    orphans = set_aside_orphans(plan.folder, {Path(r.path).name for r in results}, tracking)
    if orphans:
        print(f"set aside {len(orphans)} trial(s) that a killed driver started but never "
              f"recorded (their configurations ran again): folders moved to "
              f"{plan.experiment}/{ORPHANS_DIR}, MLflow runs deleted (`mlflow runs restore "
              "--run-id ID` brings one back)")
    leaderboard = None if interrupted else test_chosen_trials(plan, data, scorer_cache)
    close_sweep(tracking, results, interrupted, args.metric, plan.mode, leaderboard)
    if leaderboard is not None:
        log_test_numbers(tracking, leaderboard)
    print(f"\nbest trials by {args.metric} ({plan.mode}):")
    table = member_table if args.fuse > 1 else best_table
    print(table(results, args.metric, plan.mode, plan.space))
    errors = failed_members(results) if args.fuse > 1 else sum(1 for r in results if r.error)
    if errors:
        print(f"{errors} trial(s) failed or diverged; see their error.txt in the trial folders")
    print(f"results, checkpoints and per-trial figures: {plan.experiment}")
    print(f"MLflow runs: experiment {args.name!r} in {plan.mlflow_uri} "
          f"(`mlflow ui --backend-store-uri {plan.mlflow_uri}`); the trials ranked: "
          f"{trials_view_link(plan.mlflow_uri, tracking.experiment_id)}")
    if interrupted:
        print(f"interrupted with {unfinished} trial(s) unfinished: continue with --resume "
              f"--name {args.name}", file=sys.stderr)
        return stop.exit_code()
    return EXIT_TRIALS_FAILED if errors else EXIT_OK


def main(model: str) -> None:
    sys.exit(run(model, sys.argv[1:]))
