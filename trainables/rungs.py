"""Asynchronous successive halving (ASHA, Li et al. 2020): where it may stop a trial, and its rule
applied per member of fused groups. numpy only, so it runs where Ray is absent."""

from __future__ import annotations

import math

import numpy as np


def rung_epochs(grace_period: int, reduction: int, epochs: int) -> frozenset[int]:
    """The epochs before the last after which asynchronous successive halving may stop a trial:
    grace_period * reduction^i (the rungs of Tune's ASHAScheduler, and of MemberRungs)."""
    rungs, epoch = set(), grace_period
    while epoch < epochs:
        rungs.add(epoch)
        epoch *= reduction
    return frozenset(rungs)


class AshaRungs:
    """Asynchronous successive halving (ASHA, Li et al. 2020) for members of fused groups.

    Rungs at grace_period * reduction^i epochs. A member reaching a rung records its objective
    there and is stopped when it falls below the best 1/reduction of the values recorded at that
    rung so far (no cutoff until `reduction` values are in): the rule of Tune's ASHAScheduler,
    applied per member instead of per Tune trial.
    """

    def __init__(self, grace_period: int, reduction: int, max_epochs: int, mode: str):
        self.rungs = rung_epochs(grace_period, reduction, max_epochs)
        self.reduction, self.mode = reduction, mode
        self.recorded: dict[int, dict[str, float]] = {rung: {} for rung in self.rungs}

    def should_stop(self, member: str, epoch: int, value: float) -> bool:
        if epoch not in self.rungs or value is None or not math.isfinite(value):
            return False
        values = self.recorded[epoch]
        values[member] = value
        if len(values) < self.reduction:
            return False
        top = 100 / self.reduction
        if self.mode == "max":
            return value < np.percentile(list(values.values()), 100 - top)
        return value > np.percentile(list(values.values()), top)
