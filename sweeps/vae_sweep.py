"""Sweep the VAE's hyperparameters on Ray Tune with Optuna; see README.md for every option.

    python sweeps/vae_sweep.py --smoke --data-dir ../shared/data     # a one-minute check
    python sweeps/vae_sweep.py --data-dir ../shared/data --num-samples 32 --epochs 10
    python sweeps/vae_sweep.py --address auto --gpus-per-trial 0.25 --storage-path /shared/sweeps
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from sweeps.runner import main  # noqa: E402

if __name__ == "__main__":
    main("vae")
