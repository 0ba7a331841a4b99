"""Per-trial overhead of a sweep: how busy its trial slots were, against the trials' own time.

    python bench/bench_sweep_overhead.py --data-dir data

Runs a real VAE sweep (FIFO, every trial the same length, about a minute on a 2-core CPU) on a local
Ray and compares the wall time with the sum of the trials' own training times (`time_total_s`,
what Tune measured inside each trial): utilisation = sum(trial time) / (wall time x slots), where
slots = trials that fit at once. What is missing to 100% is the sweep's own overhead: starting Ray
and the trial processes, shipping the data, checkpoints, MLflow records, searcher and scheduler.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sweeps.runner import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2, help="trials at once (1 CPU each)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-subset", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        code = run("vae", ["--data-dir", str(args.data_dir), "--storage-path", folder,
                           "--name", "overhead", "--num-samples", str(args.trials),
                           "--max-concurrent", str(args.slots), "--epochs", str(args.epochs),
                           "--train-subset", str(args.train_subset), "--scheduler", "fifo",
                           "--mlflow-uri", f"sqlite:///{folder}/mlflow.db"])
        wall = time.perf_counter() - start
        assert code == 0, "the sweep failed"
        trial_seconds = []
        for trial in Path(folder, "overhead").glob("train_trial_*"):
            last = (trial / "result.json").read_text().splitlines()[-1]
            trial_seconds.append(json.loads(last)["time_total_s"])
    busy = sum(trial_seconds)
    print(f"{len(trial_seconds)} trials of {busy / len(trial_seconds):.1f}s each on average, "
          f"{args.slots} slots: wall {wall:.1f}s (Ray start included), trial time {busy:.1f}s, "
          f"ideal wall {busy / args.slots:.1f}s; utilisation {busy / (wall * args.slots):.1%}")


if __name__ == "__main__":
    main()
