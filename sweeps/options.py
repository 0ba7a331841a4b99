"""A sweep's options: the command line, its defaults, each option checked in one place, and what
a --resume keeps from the sweep it continues.

`sweeps/runner.py` runs a sweep from the `argparse.Namespace` built here. Nothing here touches Ray,
the data or MLflow: a bad option costs a fraction of a second and writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from genmodels.data import DATA_DIR_ENV, DATASETS
from genmodels.device import PRECISIONS
from genmodels.loop import TrainConfig
from genmodels.names import OBJECTIVES, OPTIONS_FILE
from genmodels.tasks import TASKS
from sweeps.held_out import DEFAULT_TEST_TOP
from sweeps.storage import SweepFolder

# --fuse when not given, on GPUs: where bench/bench_fused.py showed fusing beats packed processes
# (H200, steps as CUDA graphs on both sides, fp32). K = 16: the VAE did 6.2x one trial's
# trial-epochs per hour and 5.8x four packed processes'; the GAN (members' convolutions side by side
# on CUDA streams, the 2026-11-28 round) 1.96x one trial, where four packed processes did 1.00x.
# Larger groups do a bit more (K = 64: VAE 9.0x, GAN 2.07x) but make Optuna ask for that many
# configurations at a time, all but the default at random (docs/benchmarks.md, "Fused trials").
GPU_FUSE = {"vae": 16, "gan": 16}
DEFAULT_EPOCHS, DEFAULT_GRACE_PERIOD = 10, 1
# --epochs and --grace-period of a GAN sweep on GPUs: bench/gan_curve.py on an H200 (docs/benchmarks.md)
# had the seed's GAN at Inception Score 9 on the validation split at epoch 100 (about a minute and a
# half of training there), and configurations separating from epoch 10 on (at epoch 5 a slow starter
# such as the default still scores 1.6), so ASHA's first rung waits until then.
GPU_GAN_EPOCHS, GPU_GAN_GRACE_PERIOD = 100, 10
SMOKE = {  # a sweep that finishes in about a minute on a laptop CPU
    "num_samples": 4, "epochs": 2, "train_subset": 512, "batch_size": 64, "max_concurrent": 2,
    "cpus_per_trial": 1, "eval_samples": 500, "classifier_epochs": 2, "iwae_samples": 5,
    "test_samples": 1000,  # the GAN's test scores of the best --test-top (a real run: 10,000)
}
# On --resume the sweep keeps its own options (epochs, data set, space...). Its location and Ray
# address are always this command's; these may be given anew; any other option given with another
# value than the sweep's is an error naming both.
RESUME_CURRENT = ("address", "resume", "storage_path", "name")
RESUME_OVERRIDES = ("max_concurrent", "data_dir", "mlflow_uri", "max_failures", "download")
DEFAULT_MAX_FAILURES = 2  # retries of a trial whose worker or node died, from its last checkpoint


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
                   help="GPUs per trial, fractions allowed: 0.25 packs four trials on a GPU. "
                        f"Asking for GPUs changes defaults: --fuse {GPU_FUSE[model]}"
                        + (f", --epochs {GPU_GAN_EPOCHS}, --grace-period {GPU_GAN_GRACE_PERIOD}"
                           if model == "gan" else "")
                        + " (the sweep's header says which applied; give them to override)")
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
    p.add_argument("--refill", action=argparse.BooleanOptionalAction, default=True,
                   help="with --fuse: a member that ends (stopped early, diverged, finished) hands "
                        "its slot in the group to a fresh configuration, so groups stay full "
                        "(default); --no-refill: groups only shrink")
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
    return p


def parse_options(model: str, argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser(model)
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if hasattr(args, key) and parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    # Asking for GPUs changes three defaults (a GPU trains a fused group as fast as one trial,
    # and the GAN needs ~100 epochs to reach its scores); `gpu_defaults` names the ones applied,
    # so the sweep's header can say so.
    gpu, gpu_gan = args.gpus_per_trial > 0, model == "gan" and args.gpus_per_trial > 0
    applied = {}
    if args.fuse is None:
        args.fuse = GPU_FUSE[model] if gpu else 1
        if gpu:
            applied["fuse"] = args.fuse
    if args.epochs is None:
        args.epochs = GPU_GAN_EPOCHS if gpu_gan else DEFAULT_EPOCHS
        if gpu_gan:
            applied["epochs"] = args.epochs
    if args.grace_period is None:
        args.grace_period = min(GPU_GAN_GRACE_PERIOD if gpu_gan else DEFAULT_GRACE_PERIOD, args.epochs)
        if gpu_gan:
            applied["grace-period"] = args.grace_period
    args.gpu_defaults = applied
    check_options(args)
    return args


def gpu_defaults_line(args: argparse.Namespace) -> str | None:
    """The defaults that asking for GPUs applied, and how to override them (None: none applied)."""
    applied = args.gpu_defaults
    if not applied:
        return None
    values = ", ".join(f"{name.replace('-', ' ')} {value}" for name, value in applied.items())
    flags = ", ".join(f"--{name}" for name in applied)
    return f"defaults   GPU defaults: {values}; override with {flags}"


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
    if not 0 < args.val_fraction < 1:
        raise SweepError(f"--val-fraction is the share of training images held out for validation, "
                         f"between 0 and 1 (exclusive), got {args.val_fraction}")
    if args.test_top < 0:
        raise SweepError(f"--test-top must be 0 (none) or more, got {args.test_top}")
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


def train_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields shared by every trial (validated here, once, by building one)."""
    settings = {"dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
                "train_subset": args.train_subset, "seed": args.seed, "precision": args.precision}
    for model_specific in ("val_fraction", "eval_samples", "test_samples", "test_images",
                           "iwae_samples", "iwae_images"):
        if hasattr(args, model_specific):  # (the VAE's IWAE settings, the GAN's sample counts)
            settings[model_specific] = getattr(args, model_specific)
    try:
        TrainConfig(**settings)
    except ValueError as err:
        raise SweepError(str(err)) from err
    return settings


def restore_options(args: argparse.Namespace, given: set[str], experiment: SweepFolder,
                    parser: argparse.ArgumentParser) -> argparse.Namespace:
    """On --resume, the interrupted sweep's own options (data, epochs, space...), so every trial of
    one sweep trains the same way; RESUME_CURRENT and RESUME_OVERRIDES say what may change."""
    if not experiment.exists(OPTIONS_FILE):
        raise SweepError(f"--resume: {experiment.location} has no {OPTIONS_FILE}; it was not "
                         "started by this sweep tool, or never got past its checks")
    options = experiment.read_json(OPTIONS_FILE)
    missing = sorted(set(vars(args)) - set(options))
    if missing:
        flags = ", ".join("--" + key.replace("_", "-") for key in missing)
        raise SweepError(f"--resume: {experiment.location} was written by an earlier development "
                         f"version of gensweep (its options lack {flags}), which this version cannot "
                         "continue: start a new sweep with another --name (the old folder and its "
                         "MLflow runs stay readable by the analysis)")
    for key in sorted(given - set(RESUME_CURRENT) - set(RESUME_OVERRIDES)):
        if key in options and options[key] != getattr(args, key):
            flag = "--" + key.replace("_", "-")
            raise SweepError(f"--resume: {flag} {getattr(args, key)!r} differs from the sweep's "
                             f"{options[key]!r}; a resumed sweep keeps its own {flag} (drop it, or "
                             "start a new sweep with another --name)")
    for key in (*RESUME_CURRENT, *RESUME_OVERRIDES):
        if key in RESUME_CURRENT or key in given or key not in options:
            options[key] = getattr(args, key)
    return argparse.Namespace(**options)


def fixed_model_values(model: str, searched: dict) -> dict:
    """The model config's values that are not searched: the dataclass defaults."""
    cfg_class, _ = TASKS[model]
    return {f.name: f.default for f in dataclasses.fields(cfg_class) if f.name not in searched}
