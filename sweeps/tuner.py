"""Ray Tune's side of a sweep: the search space as Tune's distributions, the scheduler, the Tuner.

Only `sweeps/runner.py` imports this module, once the checks have passed: everything before it
(options, the search space, the data check) runs without Ray.
"""

from __future__ import annotations

from ray import tune

from sweeps.search_space import Range


def to_tune(space: dict[str, Range]) -> dict:
    """Our ranges as Tune's distributions (sampled by Optuna through OptunaSearch)."""
    return {name: tune_distribution(r) for name, r in space.items()}


def tune_distribution(r: Range):
    if r.integer:
        # Tune's integer upper bounds are exclusive; ours are inclusive.
        sample = tune.lograndint if r.log else tune.randint
        return sample(int(r.low), int(r.high) + 1)
    return (tune.loguniform if r.log else tune.uniform)(r.low, r.high)
