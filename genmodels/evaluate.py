"""The reference report: what the scores read for real images (the ceiling) and noise (the floor).

    python -m genmodels.evaluate --dataset mnist --data-dir data

Prints JSON: the scoring classifier's test accuracy, the scores of real training images against the
real test set, and those of uniform noise. A generator's scores fall between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from genmodels.classifier import CACHE_ENV, ensure_classifier, load_cache, load_scorer
from genmodels.data import DATASETS, load_dataset, to_unit_interval
from genmodels.device import resolve_device

DEFAULT_SAMPLES = 10_000
NOISE_SEED = 0


def reference_report(dataset: str, data_dir=None, cache_dir=None, num_samples: int = DEFAULT_SAMPLES,
                     device: str = "auto") -> dict:
    data = load_dataset(dataset, data_dir)
    path = ensure_classifier(dataset, data, cache_dir, device=device)
    scorer = load_scorer(path, resolve_device(device))
    real = to_unit_interval(data.train_images[:num_samples])
    noise = torch.rand(len(real), 1, 28, 28, generator=torch.Generator().manual_seed(NOISE_SEED))
    start = time.perf_counter()
    real_scores = scorer.score(real, value_range=(0.0, 1.0))
    seconds = time.perf_counter() - start
    return {
        "dataset": dataset,
        "classifier": str(path),
        "classifier_test_accuracy": load_cache(path)["test_accuracy"],
        "num_samples": len(real),
        "real_train_vs_test": real_scores,
        "uniform_noise": scorer.score(noise, value_range=(0.0, 1.0)),
        "scoring_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genmodels.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_ENV} or ~/.cache/gensweep")
    parser.add_argument("--num-samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    report = reference_report(args.dataset, args.data_dir, args.cache_dir, args.num_samples,
                              args.device)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
