"""Is the gain real? Retrain a sweep's best configurations and the seed's default with other seeds.

    gensweep-repeats --results runs/sweeps/vae-sweep --top 1 --seeds 3
    python sweeps/repeats.py --results runs/sweeps/vae-sweep --data-dir data

    from sweeps.repeats import repeat_best, summarize
    runs = repeat_best(results="runs/sweeps/vae-sweep", top=2, seeds=3)    # one row per run
    table, sentence = summarize(runs)

A sweep's best trial won among many on one seed, so its own numbers flatter it (the winner's curse).
Here the best `top` configurations by the validation objective and the default configuration (the
model config's defaults, whether or not the sweep ran it) are each trained again with `seeds` fresh
seeds, sweep seed + 1 .. sweep seed + S, the same seeds for every configuration so that the
comparison is paired (a seed fixes the weights' initialisation, the batches and the noise), with the
sweep's own training settings (its gensweep_options.json). Each run is measured on the validation
split every epoch, as in the sweep, and on the test split once, at its end.

Writes `repeats.csv` (one row per run) and `repeats.md` (per configuration the mean and spread of the
objective and of its test counterpart, and the paired difference best - default on the test metric
with its standard error and a 95% t-interval) to --out, by default reports/<sweep name>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:
    from genmodels.data import DataError
except ModuleNotFoundError as err:  # run as a file from a checkout that was never installed
    if err.name != "genmodels":
        raise
    sys.exit("error: the gensweep package is not installed in this Python: run `pip install -e .` "
             "in the checkout (or `python -m sweeps.repeats` from its root)")
from genmodels.names import DIRECTIONS, OPTIONS_FILE, on_test_split
from results.folder import read_ray_folder
from results.ranking import USABLE, rank_trials
from results.table import LoadError, build_sweep

REPORTS_DIR = "reports"
RUNS_FILE, SUMMARY_FILE = "repeats.csv", "repeats.md"
DEFAULT_TOP, DEFAULT_SEEDS = 1, 3
CONFIDENCE = 0.95  # of the t-interval that decides "beats" / "does not beat"
DEFAULT_LABEL = "default"
UNITS = {"elbo": "nats", "recon": "nats", "iwae": "nats"}  # the VAE's bounds are log-likelihoods


class RepeatError(ValueError):
    """The sweep cannot be repeated as asked; the message says what to pass instead."""


# ---- what to train ----------------------------------------------------------------------------
def sweep_options(results: Path) -> dict:
    """The sweep's own options (epochs, data, seed, ...), from its gensweep_options.json."""
    path = results / OPTIONS_FILE
    if not path.exists():
        raise RepeatError(f"{results} has no {OPTIONS_FILE}: pass the folder of a sweep started by "
                          "sweeps/vae_sweep.py or sweeps/gan_sweep.py, <--storage-path>/<--name>")
    return json.loads(path.read_text())


def default_values(model: str) -> dict:
    """The model config's defaults: the seed's default configuration."""
    from genmodels.tasks import TASKS

    return dataclasses.asdict(TASKS[model][0]())


def is_default_row(row: pd.Series, model: str) -> bool:
    """Whether a trial of the table (its `config/<name>` columns) ran the default configuration."""
    from sweeps.search_space import is_default_config  # plain data: no Ray, no torch

    return is_default_config(row.to_dict(), model)


def row_config(row: pd.Series, model: str) -> dict:
    """The full model config of a trial: the defaults with its searched values, typed as the
    config's fields are (the table holds Int64 / float64)."""
    values = default_values(model)
    for column in row.index:
        name = column.removeprefix("config/")
        if column.startswith("config/") and name in values and pd.notna(row[column]):
            kind = type(values[name])
            values[name] = kind(row[column]) if kind in (int, float, bool) else row[column]
    return values


def short_config(config: dict, searched: list[str]) -> str:
    return ", ".join(f"{k} {config[k]:.3g}" if isinstance(config[k], float) else f"{k} {config[k]}"
                     for k in searched)


@dataclasses.dataclass
class Plan:
    """What `repeat_best` trains: (label, trial id or None, full model config) per configuration."""

    model: str
    metric: str  # the sweep's validation objective
    test_metric: str | None  # its test-split counterpart
    mode: str
    configurations: list[tuple[str, str | None, dict]]
    searched: list[str]  # the hyperparameters the sweep searched
    seeds: list[int]
    settings: dict  # TrainConfig fields of every run (the sweep's own)
    options: dict
    default_was_trial: bool


def plan_repeats(results: str | Path, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS) -> Plan:
    """Read the sweep and decide the runs; every input problem is raised here, before training."""
    if not isinstance(top, int) or top < 1:
        raise RepeatError(f"top must be a positive integer (configurations to repeat), got {top!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise RepeatError(f"seeds must be a positive integer (runs per configuration), got {seeds!r}")
    folder = Path(results).expanduser()
    if not folder.is_dir():
        raise RepeatError(f"no sweep folder {folder}: pass the sweep's folder, "
                          "<--storage-path>/<--name> (default runs/sweeps/<model>-sweep)")
    options = sweep_options(folder)
    records, _ = read_ray_folder(folder)
    sweep = build_sweep(records, folder.resolve().name, None, options.get("metric"), None,
                        {"results": str(folder), "options": options})
    ranked = rank_trials(sweep.trials, sweep.metric, sweep.mode, history=sweep.history)
    usable = ranked[ranked["status"].isin(USABLE) & ranked[sweep.metric].notna()]
    if usable.empty:
        raise RepeatError(f"no trial of {folder} finished with {sweep.metric}: nothing to repeat "
                          f"(statuses: {dict(ranked['status'].value_counts())})")
    searched = [c.removeprefix("config/") for c in ranked if c.startswith("config/")]
    configurations, seen = [], []
    for _, row in usable.iterrows():
        if len(configurations) == top:
            break
        config = row_config(row, sweep.model)
        if config in seen:  # the same configuration twice (e.g. a resumed sweep): train it once
            continue
        seen.append(config)
        label = f"best #{len(configurations) + 1}"
        if is_default_row(row, sweep.model):
            label += f" = {DEFAULT_LABEL}"
        configurations.append((label, str(row["trial_id"]), config))
    if not any(label.endswith(DEFAULT_LABEL) for label, _, _ in configurations):
        default_trial = next((str(r["trial_id"]) for _, r in ranked.iterrows()
                              if is_default_row(r, sweep.model)), None)
        configurations.append((DEFAULT_LABEL, default_trial, default_values(sweep.model)))
    default_was_trial = any(is_default_row(r, sweep.model) for _, r in ranked.iterrows())
    from sweeps.options import train_settings  # the sweep's own TrainConfig fields, checked

    settings = train_settings(argparse.Namespace(**options))
    first = int(options.get("seed", 0)) + 1
    return Plan(model=sweep.model, metric=sweep.metric, test_metric=on_test_split(sweep.metric),
                mode=sweep.mode, configurations=configurations, searched=searched,
                seeds=list(range(first, first + seeds)), settings=settings, options=options,
                default_was_trial=default_was_trial)


# ---- training ---------------------------------------------------------------------------------
def make_scorer(plan: Plan, data, cache_dir: str | None, device):
    """The GAN's scorer, as the sweep built it (the smoke sweep's own small classifier included)."""
    if plan.model != "gan":
        return None
    from genmodels.classifier import EPOCHS, ensure_classifier, load_scorer

    options = plan.options
    scoring_data = data.subset(options.get("train_subset")) if options.get("smoke") else data
    path = ensure_classifier(plan.settings["dataset"], scoring_data,
                             cache_dir or options.get("cache_dir"),
                             epochs=options.get("classifier_epochs") or EPOCHS)
    return load_scorer(path, device)


def repeat_best(results: str | Path, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS,
                data_dir: str | None = None, device: str = "auto", num_threads: int | None = None,
                cache_dir: str | None = None, progress=print) -> pd.DataFrame:
    """Train each chosen configuration with each seed; one row per run (see the module docstring).
    `data_dir` overrides the sweep's; `progress` gets one line per run (None: silent)."""
    return run_plan(plan_repeats(results, top, seeds), data_dir, device, num_threads, cache_dir,
                    progress)


def run_plan(plan: Plan, data_dir: str | None = None, device: str = "auto",
             num_threads: int | None = None, cache_dir: str | None = None,
             progress=print) -> pd.DataFrame:
    """The runs of `plan` (from `plan_repeats`), one row each."""
    from genmodels.data import load_dataset
    from genmodels.device import resolve_device
    from genmodels.loop import TrainConfig, Trainer
    from genmodels.tasks import TASKS

    data = load_dataset(plan.settings["dataset"], data_dir or plan.options.get("data_dir"))
    scorer = make_scorer(plan, data, cache_dir, resolve_device(device))
    cfg_class = TASKS[plan.model][0]
    searched = plan.searched
    rows, total = [], len(plan.configurations) * len(plan.seeds)
    for index, (seed, (label, trial_id, config)) in enumerate(
            ((s, c) for s in plan.seeds for c in plan.configurations), start=1):
        # Seeds in the outer loop: a run cut short leaves every configuration's first seeds done.
        train_cfg = TrainConfig(**{**plan.settings, "seed": seed, "device": device,
                                   "num_threads": num_threads})
        start = time.perf_counter()
        trainer = Trainer.create(plan.model, cfg_class(**config), train_cfg, data, scorer=scorer)
        history = trainer.fit()
        test = trainer.test()
        seconds = time.perf_counter() - start
        values = [h[plan.metric] for h in history if plan.metric in h]
        row = {"configuration": label, "trial_id": trial_id, "seed": seed,
               **{f"config/{c}": config[c] for c in searched},
               "objective": plan.metric, plan.metric: values[-1] if values else math.nan,
               "test_metric": plan.test_metric, **test, "epochs": trainer.epoch,
               "seconds": seconds}
        rows.append(row)
        if progress is not None:
            shown = f"{plan.metric} {row[plan.metric]:.4g}"
            if plan.test_metric in test:
                shown += f", {plan.test_metric} {test[plan.test_metric]:.4g}"
            progress(f"[{index}/{total}] {label:<16} seed {seed}: {shown} ({seconds:.0f} s; "
                     f"{short_config(config, searched)})")
    runs = pd.DataFrame(rows)
    runs.attrs.update(model=plan.model, default_was_trial=plan.default_was_trial)
    return runs


# ---- the summary ------------------------------------------------------------------------------
def unit_of(metric: str) -> str:
    return UNITS.get(metric.split("_", 1)[-1], "")


def summarize(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per configuration: runs, mean and std of the objective and its test metric; and the
    sentence on the paired difference best #1 - default on the test metric (per seed)."""
    metric = str(runs["objective"].iloc[0])
    test = runs["test_metric"].dropna()
    test = str(test.iloc[0]) if len(test) and str(test.iloc[0]) in runs else None
    columns = [metric] + ([test] if test else [])
    order = list(dict.fromkeys(runs["configuration"]))
    grouped = runs.groupby("configuration", sort=False)
    table = pd.concat({"runs": grouped.size(),
                       **{f"{c} mean": grouped[c].mean() for c in columns},
                       **{f"{c} std": grouped[c].std(ddof=1) for c in columns}}, axis=1)
    table = table[["runs", *[f"{c} {s}" for c in columns for s in ("mean", "std")]]].loc[order]
    return table.reset_index(), comparison(runs, test or metric)


def comparison(runs: pd.DataFrame, metric: str) -> str:
    """'the best configuration beats the default by X ± Y <unit> <metric> over S seeds' or not."""
    labels = list(dict.fromkeys(runs["configuration"]))
    best = labels[0]
    if best.endswith(f"= {DEFAULT_LABEL}"):
        return (f"the best configuration is the default configuration: nothing to compare "
                f"({metric} over {runs['seed'].nunique()} seeds in the table)")
    if DEFAULT_LABEL not in labels:
        return "the default configuration was not repeated: no comparison"
    pivot = runs.pivot_table(index="seed", columns="configuration", values=metric)
    paired = pivot[[best, DEFAULT_LABEL]].dropna()
    sign = 1 if DIRECTIONS.get(metric, "max") == "max" else -1
    gain = sign * (paired[best] - paired[DEFAULT_LABEL])  # > 0: the best config is better
    n, unit = len(gain), unit_of(metric)
    what = f"{unit} {metric}".strip()
    if n == 0:
        return f"no seed has both the best and the default configuration's {metric}"
    mean = float(gain.mean())
    if n < 2:
        return (f"the best configuration {'beats' if mean > 0 else 'does not beat'} the default by "
                f"{mean:.3g} {what} on 1 seed (no spread: repeat with --seeds 2 or more)")
    from scipy import stats

    se = float(gain.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    low, high = mean - half, mean + half
    interval = f"{CONFIDENCE:.0%} t-interval [{low:.3g}, {high:.3g}]"
    better = "lower" if sign < 0 else "higher"
    stated = f"{abs(mean):.4g} ± {se:.3g} {what} over {n} seeds (paired by seed, mean ± standard error"
    if low > 0:
        return f"the best configuration beats the default by {stated}; {interval}; {better} is better)"
    if high < 0:
        return (f"the best configuration does not beat the default: the default is better by "
                f"{stated}; {interval} of best - default gain; {better} is better)")
    return (f"the best configuration does not beat the default clearly: it is "
            f"{'better' if mean >= 0 else 'worse'} by {stated}; the {interval} of its gain "
            f"includes 0; {better} is better)")


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (numbers to 4 significant digits; no tabulate)."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None or value is pd.NA else str(value)

    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summary_markdown(runs: pd.DataFrame, name: str) -> str:
    table, sentence = summarize(runs)
    seeds = sorted(runs["seed"].unique())
    return (f"## Seed repeats of {name}\n\n"
            f"Each configuration trained again with seeds {', '.join(map(str, seeds))} (not the "
            f"sweep's own seed), the sweep's training settings; validation objective at the last "
            f"epoch, test split once at the end.\n\n{markdown_table(table)}\n\n"
            f"**{sentence[0].upper() + sentence[1:]}.**\n\nPer run ({RUNS_FILE}):\n\n"
            f"{markdown_table(runs.drop(columns=['objective', 'test_metric']))}\n")


def write_repeats(runs: pd.DataFrame, out: str | Path, name: str) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / RUNS_FILE, "md": out / SUMMARY_FILE}
    runs.to_csv(files["csv"], index=False)
    files["md"].write_text(summary_markdown(runs, name))
    return files


# ---- the command ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sweeps/repeats.py", description=(
        "Retrain a finished sweep's best configurations and the default configuration with other "
        "seeds, and say whether the best beats the default on the test split."))
    p.add_argument("--results", required=True, help="the sweep's folder: <--storage-path>/<--name>")
    p.add_argument("--top", type=int, default=DEFAULT_TOP,
                   help=f"best configurations by the validation objective (default {DEFAULT_TOP})")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                   help=f"runs per configuration, seeds sweep seed + 1 .. + S (default {DEFAULT_SEEDS})")
    p.add_argument("--data-dir", default=None, help="data folder (default: the sweep's --data-dir)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default all)")
    p.add_argument("--cache-dir", default=None, help="GAN: scoring classifier cache")
    p.add_argument("--out", default=None, help=f"report folder (default {REPORTS_DIR}/<sweep name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_repeats(args.results, args.top, args.seeds)
    except (RepeatError, LoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = Path(args.results).expanduser().resolve().name
    print(f"{name} ({plan.model}): {len(plan.configurations)} configurations x seeds "
          f"{plan.seeds}, {plan.settings['epochs']} epochs each, by {plan.metric}"
          + ("" if plan.default_was_trial else "; the default configuration was not a trial of "
             "the sweep"))
    try:
        runs = run_plan(plan, args.data_dir, args.device, args.num_threads, args.cache_dir)
    except (RepeatError, ValueError, FileNotFoundError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = write_repeats(runs, args.out or Path(REPORTS_DIR) / name, name)
    table, sentence = summarize(runs)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(sentence)
    print(f"runs: {files['csv']}\nsummary: {files['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
