"""The search spaces, one readable definition per model, as data.

    python sweeps/gan_sweep.py --print-space
    python sweeps/gan_sweep.py --space my_space.yaml   # override some ranges

An override file (YAML or JSON) maps a hyperparameter to the fields it changes, for example:

    lr_g: {low: 1.0e-4, high: 5.0e-4}
    latent_dim: {low: 32, high: 128, log: true}

A range is checked by building the model's config at both ends, so an invalid value (a dropout of 1,
a latent size of 0, a negative learning rate) is the model's own clear error, before Ray starts.
Plain data: no Ray here (sweeps/tuner.py turns a space into Tune's distributions), so the analysis
and `--print-space` never start or import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False  # sample uniformly in log space (learning rates, sizes)
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"range low={self.low} must be below high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        return f"{kind:<5} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


# The default ranges. Dropout is the drop probability (the seed's keep-probability 0.9 is 0.1).
# Each range puts the seed's default (SEED_DEFAULTS) in its dense middle, not at a sparse edge: a
# 16-trial sweep samples a range a few times only, so a range mostly far from a good default spends
# the budget there (a 12-trial VAE sweep on [0, 0.5] sampled dropout 0.19-0.27 only, all worse than
# the default 0.1). The default itself is also evaluated as the first trial (default_point).
SPACES: dict[str, dict[str, Range]] = {
    "vae": {
        "dropout": Range(0.0, 0.3),  # the default 0.1 at a third (it was at a fifth of [0, 0.5])
        # 20 at 58% in log space. Not 2-3: far worse bounds (Kingma & Welling 2014, Fig. 2)
        "latent_dim": Range(4, 64, log=True, integer=True),
        "lr": Range(3e-4, 3e-3, log=True),  # a decade around 1e-3 (at 52% in log space)
    },
    "gan": {
        # in D, after each LeakyReLU. The seed's 0 can only be an edge (a drop probability is
        # >= 0); the first trial evaluates it exactly, and 0.3 keeps the rest near it.
        "dropout": Range(0.0, 0.3),
        "latent_dim": Range(32, 256, log=True, integer=True),  # 100 at 55% in log (88% of [16, 128])
        "lr_g": Range(5e-5, 1e-3, log=True),  # 2e-4 (Radford et al.) at 46% in log space
        "lr_d": Range(5e-5, 1e-3, log=True),
    },
}
# The seed's defaults of the searched hyperparameters: the VAEConfig / GANConfig field defaults
# (genmodels/vae.py, genmodels/gan.py; tests/test_search_space.py checks they agree). Kept here as
# data so that the analysis recognises the default trial without importing torch.
SEED_DEFAULTS: dict[str, dict[str, float | int]] = {
    "vae": {"dropout": 0.1, "latent_dim": 20, "lr": 1e-3},
    "gan": {"dropout": 0.0, "latent_dim": 100, "lr_g": 2e-4, "lr_d": 2e-4},
}
# TPE's random start-up, as a share of --num-samples: Optuna's own default, 10 random trials, is
# sized for studies of hundreds of trials and made a 12- or 16-trial sweep mostly random search.
# A quarter of the budget gives TPE's two densities (good / bad trials) a few points each, and
# leaves three quarters to the guided search. At least 2 (one density needs a point on each side),
# at most 10 (Optuna's default: more random points add nothing to a large study).
STARTUP_SHARE = 0.25
MIN_STARTUP, MAX_STARTUP = 2, 10


def load_overrides(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"search-space file {path} does not exist")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        where = getattr(err, "problem_mark", None)  # YAML's line/column of the problem
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ValueError(f"search-space file {path} is not valid {kind}{line}: {problem}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(f"{path}: expected a mapping of hyperparameter -> {{low, high, log}}")
    return raw


def search_space(model: str, overrides: dict[str, dict] | None = None) -> dict[str, Range]:
    """The model's space with `overrides` applied, validated against the model's config."""
    space = dict(SPACES[model])
    for name, fields in (overrides or {}).items():
        if name not in space:
            raise ValueError(f"unknown hyperparameter {name!r} for {model}; "
                             f"the space has {sorted(space)}")
        unknown = set(fields) - {"low", "high", "log"}
        if unknown:
            raise ValueError(f"{name}: unknown fields {sorted(unknown)}; use low, high, log")
        try:
            space[name] = dataclasses.replace(space[name], **fields)
        except (TypeError, ValueError) as err:
            raise ValueError(f"search space for {model}, {name}: {err}") from err
    from genmodels.tasks import TASKS  # torch: only to validate, never to read the ranges

    cfg_class, _ = TASKS[model]
    for end in ("low", "high"):
        values = {name: getattr(r, end) for name, r in space.items()}
        values = {k: int(v) if space[k].integer else float(v) for k, v in values.items()}
        try:
            cfg_class(**values)
        except ValueError as err:
            raise ValueError(f"search space for {model}, at the {end} end: {err}") from err
    return space


def startup_trials(num_samples: int) -> int:
    """TPE's random start-up for a sweep of `num_samples` configurations (TPESampler's
    n_startup_trials): a quarter of them, at least MIN_STARTUP, at most MAX_STARTUP."""
    return min(MAX_STARTUP, max(MIN_STARTUP, round(num_samples * STARTUP_SHARE)))


@dataclass(frozen=True)
class BudgetSplit:
    """How a sweep's configurations are chosen: the default, TPE's random start-up, TPE's guess."""

    default: int  # 1 when the seed's default configuration is the first trial, else 0
    random: int  # sampled at random by TPE's start-up
    guided: int  # sampled by TPE from the trials that had ended
    startup: int  # TPE's n_startup_trials: random until this many trials have ended

    def describe(self) -> str:
        parts = (["trial 1 the default"] if self.default else []) + [
            f"{self.random} random start-up", f"{self.guided} guided"]
        return ", ".join(parts)


def units_at_once(at_once: int, num_samples: int, group_size: int = 1) -> int:
    """Trials (or fused groups of at most `group_size`) running together: `at_once`, but never
    more than the sweep's `num_samples` configurations fill."""
    return min(at_once, -(-num_samples // min(group_size, num_samples)))


def budget_split(num_samples: int, default_first: bool, startup: int, at_once: int = 1,
                 group_size: int = 1, refill: bool = False) -> BudgetSplit:
    """The split of `num_samples` configurations, derived from TPE's start-up count.

    Optuna's TPE samples at random until `startup` trials have ended (COMPLETE or PRUNED; the
    default trial counts among them). Configurations are asked in units (a trial, or a fused group
    of `group_size`), `at_once` units running together; unit i is asked when the units before
    i - at_once + 1 have ended, so with trials running at once more of them start at random than
    `startup`. Exact when trials end in the order they started; a failed trial does not count as
    ended for TPE, so failures lengthen the random part. With `refill`, groups ask for one
    configuration per member that ended (after the first `at_once` groups): then the unit is one
    configuration, at_once * group_size of them in flight.
    """
    at_once = max(1, at_once)
    if refill:
        at_once, group_size = at_once * group_size, 1
    default = 1 if default_first and num_samples > 0 else 0
    asked = guided = 0
    unit = 0
    while asked < num_samples:
        size = min(group_size, num_samples - asked)
        ended = max(0, unit - at_once + 1) * group_size  # configurations ended when it is asked
        if ended >= startup:
            guided += size
        asked += size
        unit += 1
    return BudgetSplit(default=default, random=num_samples - guided - default, guided=guided,
                       startup=startup)


def default_point(model: str, space: dict[str, Range]) -> dict | None:
    """The seed's default configuration as a point of `space` (its searched hyperparameters at
    their config defaults), or None when an override moved a range so that it is outside."""
    if outside_space(model, space):
        return None
    return {name: int(SEED_DEFAULTS[model][name]) if r.integer else float(SEED_DEFAULTS[model][name])
            for name, r in space.items()}


def outside_space(model: str, space: dict[str, Range]) -> list[str]:
    """Why the default configuration is not a point of `space`: one phrase per hyperparameter."""
    return [f"{name} {SEED_DEFAULTS[model][name]:g} is outside [{r.low:g}, {r.high:g}]"
            for name, r in space.items() if not r.low <= SEED_DEFAULTS[model][name] <= r.high]


def is_default_config(config, model: str, space: dict[str, Range] | None = None) -> bool:
    """Whether a trial's configuration is the seed's default: `config` maps each searched
    hyperparameter (or `config/<name>`, a row of the analysis' trials table) to its value.
    Compares the hyperparameters of `space` (default: the model's), all of which must be there."""
    names = list(space if space is not None else SPACES[model])
    values = [_number(config.get(name, config.get(f"config/{name}"))) for name in names]
    if not names or None in values:
        return False
    # Relative tolerance: a value read back from MLflow's text params or a CSV may lose digits.
    return all(math.isclose(value, float(SEED_DEFAULTS[model][name]), rel_tol=1e-6, abs_tol=1e-12)
               for name, value in zip(names, values))


def _number(value) -> float | None:
    """A finite float, or None for a missing value (None, NaN, pandas' NA) or a non-number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def describe(model: str, space: dict[str, Range]) -> str:
    lines = [f"search space ({model}, Optuna TPE):"]
    lines += [f"  {name:<11} {r.describe()}" for name, r in space.items()]
    return "\n".join(lines)
