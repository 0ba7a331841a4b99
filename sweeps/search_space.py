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
SPACES: dict[str, dict[str, Range]] = {
    "vae": {
        "dropout": Range(0.0, 0.5),
        "latent_dim": Range(2, 64, log=True, integer=True),
        "lr": Range(1e-4, 3e-3, log=True),
    },
    "gan": {
        "dropout": Range(0.0, 0.5),  # in D, after each LeakyReLU (0 is the seed's network)
        "latent_dim": Range(16, 128, log=True, integer=True),
        "lr_g": Range(5e-5, 1e-3, log=True),
        "lr_d": Range(5e-5, 1e-3, log=True),
    },
}


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


def describe(model: str, space: dict[str, Range]) -> str:
    lines = [f"search space ({model}, Optuna TPE):"]
    lines += [f"  {name:<11} {r.describe()}" for name, r in space.items()]
    return "\n".join(lines)
