"""Sweep the VAE's hyperparameters on Ray Tune with Optuna; see README.md for every option.

    gensweep-vae --smoke --data-dir data       # a one-minute check (installed command)
    python sweeps/vae_sweep.py --smoke --data-dir data   # the same, as a file
    python sweeps/vae_sweep.py --data-dir data --num-samples 32 --epochs 10
    python sweeps/vae_sweep.py --address auto --gpus-per-trial 0.25 --storage-path /shared/sweeps
"""

import sys

try:
    from sweeps.signals import launch  # the standard library only: Ctrl-C works from here on
except ModuleNotFoundError as err:  # run as a file from a checkout that was never installed
    if err.name != "sweeps":
        raise
    sys.exit("error: the gensweep package is not installed in this Python: run `pip install -e .` "
             "in the checkout (or `python -m sweeps.vae_sweep` from its root)")


def main() -> None:
    launch("vae")


if __name__ == "__main__":
    main()
