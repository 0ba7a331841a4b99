"""Train one VAE or GAN without Ray, writing metrics, figures and a checkpoint to a folder.

    python -m genmodels.train vae --data-dir data --epochs 10
    python -m genmodels.train gan --data-dir data --epochs 5 --out runs/gan
    python -m genmodels.train gan --out runs/gan --epochs 8 --resume   # continue from epoch 5

Writes to --out: config.json, metrics.json (one object per epoch, rewritten after each),
samples/epoch_NNN.png (Figures 1 and 3), samples_across_epochs.png, real_vs_reconstructed.png (VAE)
or real_vs_generated.png (GAN), checkpoint.pt (latest epoch) and status.json.

--val-fraction of the training images (a fixed seeded choice, the same in every run) are held out
as the validation split. Every --eval-every epochs the run is measured on it: the VAE's val_elbo /
val_recon / val_kl, the GAN's val_fcd, val_inception_score, val_precision, val_recall (on
--eval-samples generated images, scored by a classifier trained once per data set and cached).
After the last epoch the test split is measured once, into test_metrics.json: the VAE's test_elbo /
test_recon / test_kl on --test-images images (all 10,000 by default) and test_iwae with
K = --iwae-samples on the first --iwae-images of them; the GAN's test_fcd, test_inception_score, ...
on --test-samples generated images. The literature's IWAE number is --iwae-samples 100
--iwae-images 10000 (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from genmodels.classifier import CACHE_ENV, ensure_classifier, load_scorer
from genmodels.classifier import EPOCHS as CLASSIFIER_EPOCHS
from genmodels.data import DATA_DIR_ENV, DATASETS, DataError, load_dataset
from genmodels.device import COMPILE_MODES, PRECISIONS, resolve_device
from genmodels.figures import save_run_figures, save_sample_grid
from genmodels.files import write_json, write_status
from genmodels.loop import (
    EpochReport,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    load_checkpoint_configs,
)
from genmodels.names import CHECKPOINT_FILE, DIVERGED, FINISHED, TEST_METRICS_FILE
from genmodels.tasks import TASKS

# Options that may differ on --resume (none changes what was trained): the rest comes from the
# checkpoint.
RESUME_OVERRIDES = ("epochs", "device", "num_threads", "eval_every", "compile_mode", "channels_last",
                    "cuda_graphs", "test_images", "iwae_samples", "iwae_images", "test_samples")
# TrainConfig fields whose command-line option is spelled out by hand below.
TRAIN_CHOICES = {"dataset": sorted(DATASETS), "precision": list(PRECISIONS),
                 "compile_mode": list(COMPILE_MODES)}


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple = ()) -> None:
    """One --option per dataclass field, typed and defaulted from the dataclass itself."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f"default: {f.default}")
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        parser.add_argument(flag, type=kind, default=f.default, choices=TRAIN_CHOICES.get(f.name),
                            help=f"default: {f.default}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m genmodels.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_subparsers(dest="model", required=True)
    for name, (cfg_class, _) in TASKS.items():
        sub = models.add_parser(name, help=f"train the {name.upper()}")
        sub.add_argument("--data-dir", default=None,
                         help=f"folder holding MNIST/raw, FashionMNIST/raw (default: ${DATA_DIR_ENV}"
                              " or ./data)")
        sub.add_argument("--download", action="store_true",
                         help="let torchvision download the data set if it is missing")
        sub.add_argument("--out", default=None,
                         help="output folder (default: runs/<model>-<dataset>-<time>)")
        sub.add_argument("--resume", action="store_true",
                         help=f"continue the run in --out from its {CHECKPOINT_FILE}")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "gan":
            sub.add_argument("--no-scores", action="store_true",
                             help="skip the classifier-based scores (IS, fcd, precision, recall)")
            sub.add_argument("--cache-dir", default=None,
                             help=f"scoring classifier cache (default: ${CACHE_ENV} or ~/.cache/gensweep)")
            sub.add_argument("--classifier-epochs", type=int, default=CLASSIFIER_EPOCHS,
                             help="epochs of the scoring classifier if it must be trained (default "
                                  f"{CLASSIFIER_EPOCHS}; a cached one is used as it is)")
        train_group = sub.add_argument_group("training")
        _add_dataclass_options(train_group, TrainConfig)
        model_group = sub.add_argument_group(f"{name.upper()} model")
        _add_dataclass_options(model_group, cfg_class)
    return parser


def _pick(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def configs_from_args(args: argparse.Namespace, out: Path):
    """The model and training configs: from the command line, or from the checkpoint on resume."""
    cfg_class, _ = TASKS[args.model]
    values = vars(args)
    if args.resume:
        checkpoint = out / CHECKPOINT_FILE
        if not checkpoint.exists():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT_FILE} in {out}; pass the --out of "
                                    "the run to continue")
        model, model_values, train_values = load_checkpoint_configs(checkpoint)
        if model != args.model:
            raise ValueError(f"--resume: {checkpoint} is a {model} run, not {args.model}")
        train_values.update({k: values[k] for k in RESUME_OVERRIDES})
        return cfg_class(**model_values), TrainConfig(**train_values)
    return _pick(cfg_class, values), _pick(TrainConfig, values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/{args.model}-{args.dataset}-{stamp}")
    try:
        model_cfg, train_cfg = configs_from_args(args, out)
        if getattr(args, "classifier_epochs", 1) < 1:
            raise ValueError(f"--classifier-epochs must be a positive integer, got {args.classifier_epochs}")
        data = load_dataset(train_cfg.dataset, args.data_dir, download=args.download)
        scorer = None
        if args.model == "gan" and not args.no_scores:
            # Trained once per data set and cached; every later run only loads it.
            path = ensure_classifier(train_cfg.dataset, data, args.cache_dir, epochs=args.classifier_epochs)
            scorer = load_scorer(path, resolve_device(train_cfg.device))
        trainer = Trainer.create(args.model, model_cfg, train_cfg, data, scorer=scorer)
        if args.resume:
            trainer.resume(out / CHECKPOINT_FILE)
    except (ValueError, TypeError, FileNotFoundError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    print(trainer.describe())
    print(f"output     {out}" + (f" (resuming after epoch {trainer.epoch})" if args.resume else ""))
    write_json(out / "config.json", {"model": args.model, "model_config": model_cfg.to_dict(),
                                     "train_config": train_cfg.to_dict()})

    def on_epoch(report: EpochReport) -> None:
        save_sample_grid(report.samples, out / "samples" / f"epoch_{report.epoch:03d}.png")
        write_json(out / "metrics.json", trainer.history)
        trainer.save_checkpoint(out / CHECKPOINT_FILE)
        shown = {k: round(v, 4) for k, v in report.metrics.items() if k != "epoch"}
        print(f"epoch {report.epoch:>3}/{train_cfg.epochs}  {shown}", flush=True)

    try:
        trainer.fit(on_epoch, progress=not args.no_progress)
    except TrainingDiverged as err:
        write_json(out / "metrics.json", trainer.history)
        write_status(out, DIVERGED, err.epoch, str(err))
        print(f"diverged: {err}", file=sys.stderr)
        return 1
    figures = save_run_figures(trainer, out)
    test = trainer.test()  # the test split, once, after training
    write_json(out / TEST_METRICS_FILE, {"epoch": trainer.epoch, **test})
    write_status(out, FINISHED, trainer.epoch)
    if test:
        print("test       " + "  ".join(f"{k} {v:.4g}" for k, v in test.items()))
    print(f"done: {trainer.epoch} epochs; metrics in {out / 'metrics.json'}, test numbers in "
          f"{out / TEST_METRICS_FILE}; figures: " + ", ".join(str(p) for p in figures.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
