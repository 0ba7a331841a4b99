"""The GAN's training curve: how long, at which learning rates and batch size, the seed's GAN takes to
reach an Inception Score of 9 and an fcd of 10 on MNIST (real images score about 9.8 and 5).

    python bench/gan_curve.py --data-dir data --device cuda --json bench/gan_curve.json
    python bench/gan_curve.py --data-dir tests/data --epochs 2 --eval-every 1 --eval-samples 200 \
        --configs default          # a seconds-long check of the script on a CPU

For each configuration (`--configs`, names from CONFIGS) it trains the seed's GAN with the shared
training loop (`genmodels.loop.Trainer`), scores it on the validation split every
`--eval-every` epochs with `--eval-samples` generated images (10,000 by default, the count the
literature's numbers use), and stops after `--epochs` or `--budget-s` seconds, whichever comes
first. It prints one line per evaluation, the epoch at which each target was first met on the
validation split, and each configuration's test numbers, measured once at its end. `--json` keeps
the curves; `--plot` draws them (Inception Score and fcd against epochs, one line per configuration).

Imports torch and genmodels only (no Ray, Optuna or MLflow): it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from genmodels.classifier import ensure_classifier, load_scorer  # noqa: E402
from genmodels.data import load_dataset  # noqa: E402
from genmodels.device import PRECISIONS, resolve_device  # noqa: E402
from genmodels.gan import GANConfig  # noqa: E402
from genmodels.loop import TrainConfig, Trainer  # noqa: E402

# The targets of issue 11: an Inception Score of at least 9 and an fcd of at most 10.
TARGET_IS, TARGET_FCD = 9.0, 10.0
# Configurations to compare: the seed's (Adam 2e-4, betas 0.5/0.999, batch 128) and the usual
# levers: more steps per epoch (smaller batches), faster learning rates, and D faster than G
# (two time-scale updates, Heusel et al. 2017).
CONFIGS = {
    "default": ({}, {}),
    "batch64": ({}, {"batch_size": 64}),
    "lr5e-4": ({"lr_g": 5e-4, "lr_d": 5e-4}, {}),
    "ttur": ({"lr_g": 1e-4, "lr_d": 4e-4}, {}),
    "batch64-ttur": ({"lr_g": 1e-4, "lr_d": 4e-4}, {"batch_size": 64}),
}


def run_config(name: str, data, scorer, args) -> dict:
    model_changes, train_changes = CONFIGS[name]
    model_cfg = GANConfig(**model_changes)
    train_cfg = TrainConfig(epochs=args.epochs, device=args.device, eval_every=args.eval_every,
                            eval_samples=args.eval_samples, test_samples=args.test_samples,
                            train_subset=args.train_subset, seed=args.seed,
                            precision=args.precision, **train_changes)
    trainer = Trainer.create("gan", model_cfg, train_cfg, data, scorer=scorer)
    start = time.perf_counter()
    curve, reached = [], {}
    while trainer.epoch < train_cfg.epochs:
        report = trainer.run_epoch()
        metrics = report.metrics
        if "val_fcd" not in metrics:
            continue
        elapsed = time.perf_counter() - start
        point = {"epoch": report.epoch, "seconds": elapsed,
                 **{k: metrics[k] for k in ("val_inception_score", "val_fcd", "val_precision",
                                            "val_recall")}}
        curve.append(point)
        if point["val_inception_score"] >= TARGET_IS:
            reached.setdefault("inception_score", report.epoch)
        if point["val_fcd"] <= TARGET_FCD:
            reached.setdefault("fcd", report.epoch)
        print(f"{name:<13} epoch {report.epoch:>3}  IS {point['val_inception_score']:5.2f}  "
              f"fcd {point['val_fcd']:8.1f}  precision {point['val_precision']:.2f}  "
              f"recall {point['val_recall']:.2f}  ({elapsed:.0f} s)", flush=True)
        if elapsed > args.budget_s:
            break
    test = trainer.test()  # once, at the end
    return {"name": name, "model_config": asdict(model_cfg), "train_config": asdict(train_cfg),
            "epochs": trainer.epoch, "seconds": time.perf_counter() - start, "curve": curve,
            "reached": reached, "test": test}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_is, ax_fcd) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        epochs = [p["epoch"] for p in result["curve"]]
        ax_is.plot(epochs, [p["val_inception_score"] for p in result["curve"]], marker="o",
                   label=result["name"])
        ax_fcd.plot(epochs, [p["val_fcd"] for p in result["curve"]], marker="o", label=result["name"])
    ax_is.axhline(TARGET_IS, color="gray", linestyle="--", label=f"target {TARGET_IS:g}")
    ax_fcd.axhline(TARGET_FCD, color="gray", linestyle="--", label=f"target {TARGET_FCD:g}")
    ax_is.set(xlabel="epoch", ylabel="Inception Score (validation)", title="higher is better")
    ax_fcd.set(xlabel="epoch", ylabel="fcd (validation)", yscale="log", title="lower is better")
    ax_is.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--budget-s", type=float, default=50.0, help="seconds per configuration")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-samples", type=int, default=10_000)
    p.add_argument("--test-samples", type=int, default=10_000)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="scoring classifier cache")
    p.add_argument("--json", default=None, help="write the curves here")
    p.add_argument("--plot", default=None, help="draw the curves into this PNG")
    args = p.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown --configs {unknown}; choose from {', '.join(CONFIGS)}")

    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_dir)
    scorer = load_scorer(ensure_classifier("mnist", data, args.cache_dir, device=str(device)), device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; {len(data.train_images)} MNIST training images (less the validation "
          f"split); targets IS >= {TARGET_IS:g}, fcd <= {TARGET_FCD:g}", flush=True)
    results = [run_config(n, data, scorer, args) for n in names]

    print("\nconfig         epochs  seconds  best IS  best fcd  IS>=9 at  fcd<=10 at  test IS  test fcd")
    for r in results:
        best_is = max((p["val_inception_score"] for p in r["curve"]), default=float("nan"))
        best_fcd = min((p["val_fcd"] for p in r["curve"]), default=float("nan"))
        reached, test, nan = r["reached"], r["test"], float("nan")
        print(f"{r['name']:<13} {r['epochs']:>7} {r['seconds']:>8.0f} {best_is:>8.2f} "
              f"{best_fcd:>9.1f} {str(reached.get('inception_score', '-')):>9} "
              f"{str(reached.get('fcd', '-')):>11} {test.get('test_inception_score', nan):>8.2f} "
              f"{test.get('test_fcd', nan):>9.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": name, "results": results}, indent=1))
    if args.plot:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
