"""Rank sweep trials with pandas and show a sweep in plots; see README.md, "Analysis".

    python analysis/rank.py --results runs/sweeps/vae-sweep
"""

from analysis.load import LoadError, Sweep, load_history, load_sweep, load_trials
from results.ranking import DIRECTIONS, MODEL_METRICS, best_trial, rank_trials

__all__ = ["DIRECTIONS", "MODEL_METRICS", "LoadError", "Sweep", "best_trial", "load_history",
           "load_sweep", "load_trials", "rank_trials"]
