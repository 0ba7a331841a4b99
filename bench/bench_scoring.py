"""Cost of scoring a GAN (generate + classify 10,000 images, IS / fcd / precision / recall) against
one training epoch of the same GAN on the same device.

    python bench/bench_scoring.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time

from genmodels.classifier import ensure_classifier, load_scorer
from genmodels.data import load_dataset
from genmodels.gan import GANConfig
from genmodels.training import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-samples", type=int, default=10_000)
    args = parser.parse_args()
    data = load_dataset(args.dataset, args.data_dir)
    train_cfg = TrainConfig(dataset=args.dataset, epochs=1, device=args.device,
                            eval_samples=args.eval_samples)
    scorer_path = ensure_classifier(args.dataset, data, device=args.device)
    trainer = Trainer.create("gan", GANConfig(), train_cfg, data)
    scorer = load_scorer(scorer_path, trainer.device)

    start = time.perf_counter()
    trainer._train_epoch(progress=False)
    epoch_s = time.perf_counter() - start

    trainer.task.scorer = scorer
    start = time.perf_counter()
    scores = trainer.task.evaluate(epoch=1, last=True)
    score_s = time.perf_counter() - start
    print(f"device {trainer.device}: one training epoch ({len(trainer.data.train_images)} images) "
          f"{epoch_s:.1f}s; scoring {args.eval_samples} generated images {score_s:.1f}s; "
          f"ratio scoring/epoch {score_s / epoch_s:.2f}")
    print({k: round(v, 3) for k, v in scores.items()})


if __name__ == "__main__":
    main()
