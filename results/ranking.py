"""Rank sweep trials: pure functions on the DataFrame of `analysis.load.load_trials`.

    from analysis import load_trials, rank_trials
    ranked = rank_trials(load_trials(results="runs/sweeps/vae-sweep"))   # VAE: val_elbo, higher first

Order, always: usable trials (finished or stopped early by the scheduler) that have the metric, best
first; then usable trials without it (a GAN run with scores off, a trial stopped before its first
evaluation); then the trials that failed, diverged or never finished, which rank last and keep their
status, never dropped. By the last value (`scope="last"`), a trial the scheduler stopped early never
outranks one that ran longer, unless it was better than that one at the epoch it was stopped at:
its last value was measured earlier in training, and a GAN's scores can worsen later (ASHA
stopped it because it was worse then). Equal values share a rank (competition ranking: 1, 2, 2,
4) and are listed by trial id, so the order is the same on every call and from either source.
"""

from __future__ import annotations

import pandas as pd

# The metrics (always columns of the table, NaN where a trial never reported them), their
# directions and the trial statuses are the sweeps' own names, defined once in genmodels.names.
from genmodels.names import DIRECTIONS, MODEL_METRICS, STOPPED_EARLY, USABLE, on_test_split

__all__ = ["DIRECTIONS", "MODEL_METRICS", "USABLE", "best_trial", "default_metric", "direction",
           "rank_trials", "summary_columns"]


def default_metric(model: str) -> str:
    if model not in MODEL_METRICS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODEL_METRICS)}")
    return MODEL_METRICS[model][0]


def direction(metric: str, mode: str | None = None) -> str:
    """"max" or "min" for `metric`; `mode` overrides, and is required for a metric we don't know."""
    if mode is not None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        return mode
    if metric not in DIRECTIONS:
        raise ValueError(f"no known direction for metric {metric!r}: pass mode='max' or 'min' "
                         f"(known: {sorted(DIRECTIONS)})")
    return DIRECTIONS[metric]


def rank_trials(trials: pd.DataFrame, metric: str | None = None, mode: str | None = None,
                scope: str = "last", history: pd.DataFrame | None = None) -> pd.DataFrame:
    """`trials` sorted best first with a `rank` column (1 = best) in front.

    metric: a metric column (default: the model's objective, from the `model` column).
    mode: "max" / "min" (default: the metric's known direction).
    scope: "last" ranks by the final value (what Ray Tune's best result uses); "best" by the best
    value over the epochs (`best_<metric>`).
    history: the sweep's per-epoch values (`Sweep.history`): with it, by the last value, a trial
    stopped early ranks below every trial that ran longer and was at least as good at the epoch
    it was stopped at (the module's docstring).
    """
    if scope not in ("last", "best"):
        raise ValueError(f"scope must be 'last' or 'best', got {scope!r}")
    if metric is None:
        models = set(trials["model"].dropna()) if "model" in trials else set()
        if len(models) != 1:
            raise ValueError(f"pass metric=...: the table holds models {sorted(models) or 'none'}")
        metric = default_metric(models.pop())
    mode = direction(metric, mode)
    column = f"best_{metric}" if scope == "best" else metric
    if column not in trials:
        present = [c for c in trials.columns if c in DIRECTIONS or c in sum(MODEL_METRICS.values(), ())]
        raise KeyError(f"no column {column!r} to rank by; metrics in this table: {present}")
    values = pd.to_numeric(trials[column], errors="coerce").astype("float64")
    usable = trials["status"].isin(USABLE).to_numpy()
    has_value = values.notna().to_numpy() & usable
    group = pd.Series(2, index=trials.index)  # 0: usable with value, 1: usable without, 2: not usable
    group[usable] = 1
    group[has_value] = 0
    # One key a stable sort can use in both directions: larger is better after negating for "min".
    key = values.where(has_value).mul(-1 if mode == "max" else 1)
    below = pd.Series(0, index=trials.index)  # 1: placed just below a longer trial it ties with
    if scope == "last" and history is not None and "epochs" in trials:
        key, below = keys_of_stopped_trials(trials, key, history, metric, -1 if mode == "max" else 1)
    order = pd.DataFrame({"group": group, "key": key, "below": below,
                          "trial_id": trials["trial_id"].astype(str)})
    order = order.sort_values(["group", "key", "below", "trial_id"], kind="mergesort",
                              na_position="last")
    ranked = trials.loc[order.index].drop(columns="rank", errors="ignore")  # ranked again: anew
    position = pd.Series(range(1, len(ranked) + 1), index=ranked.index)
    # Equal values share the first position of their tie; the other trials keep their position.
    valued = order["group"] == 0
    rank = position.copy()
    rank[valued] = position[valued].groupby([order["key"][valued], order["below"][valued]]
                                            ).transform("min")
    ranked.insert(0, "rank", rank.astype("Int64"))
    return ranked.reset_index(drop=True)


def keys_of_stopped_trials(trials: pd.DataFrame, key: pd.Series, history: pd.DataFrame,
                           metric: str, sign: int) -> tuple[pd.Series, pd.Series]:
    """The sort keys (smaller is better) with every trial stopped early moved below each trial
    that ran more epochs and whose value at the stopped trial's last epoch (its latest at or
    before it) was at least as good as the stopped trial's last; and which trials were moved.
    Longer trials first, so a stopped trial lands below the moved key of a trial stopped later."""
    key, below = key.copy(), pd.Series(0, index=trials.index)
    rows = history[history["metric"] == metric] if "metric" in history else history.iloc[0:0]
    curves = {trial: frame.sort_values("epoch") for trial, frame in rows.groupby("trial_id")}
    epochs = pd.to_numeric(trials["epochs"], errors="coerce")
    ids = trials["trial_id"].astype(str)
    stopped = trials.index[(trials["status"] == STOPPED_EARLY).to_numpy() & key.notna().to_numpy()]
    for s in sorted(stopped, key=lambda i: -epochs[i]):
        own, above = key[s], []  # above: the keys of the longer trials it may not outrank
        for t in trials.index[(epochs > epochs[s]).to_numpy() & key.notna().to_numpy()]:
            curve = curves.get(ids[t])
            then = curve[curve["epoch"] <= epochs[s]]["value"] if curve is not None else ()
            if len(then) and sign * then.iloc[-1] <= own:
                above.append(key[t])
        if above and max(above) >= own:
            key[s], below[s] = max(above), 1
    return key, below


def summary_columns(ranked: pd.DataFrame, metric: str) -> list[str]:
    """The columns worth reading first: rank, identity, hyperparameters, the metric, how it ran."""
    columns = ["rank", "trial_id", "status", *[c for c in ranked if c.startswith("config/")],
               "sampled", metric, on_test_split(metric), f"best_{metric}", "best_epoch", "epochs",
               "duration_s", "error"]
    return [c for c in columns if c is not None and c in ranked]


def best_trial(trials: pd.DataFrame, metric: str | None = None, mode: str | None = None,
               history: pd.DataFrame | None = None) -> pd.Series:
    """The top row of `rank_trials`, or a clear error when no usable trial has the metric."""
    ranked = rank_trials(trials, metric, mode, history=history)
    if ranked.empty or ranked["status"].iloc[0] not in USABLE:
        raise ValueError("no trial finished: every trial failed, diverged or did not finish")
    return ranked.iloc[0]
