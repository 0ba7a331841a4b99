"""A sweep's report: figures of the ranked trials and an HTML page that ties them together.

    from analysis import load_sweep
    from analysis.report import write_report
    write_report(load_sweep(results="runs/sweeps/vae-sweep"), "reports/vae-sweep")

Pure functions from DataFrames to files (matplotlib's object API, no pyplot state): the metric
against each hyperparameter, learning curves of the top trials, a parallel-coordinates view,
hyperparameter importances from Optuna's evaluators on a study rebuilt from the trials, and the final
sample grids of the best trials side by side. Failed and diverged trials are drawn as red crosses on
the bottom edge of the plots, never left out, but never among the best: the best-trials table, the
learning curves and the sample grids show finished trials only (the failed are listed apart).

The page also says how the sweep chose its configurations (the default first, TPE's random
start-up, the guided rest: sweeps/search_space.py) and how the best trial compares with the seed's
default configuration; importances are computed only from MIN_IMPORTANCE_TRIALS finished trials on.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from analysis.load import Sweep
from genmodels.names import DEFAULT_SAMPLED, GUIDED_SAMPLED, RANDOM_SAMPLED
from results.folder import local_trial_folder
from results.ranking import USABLE, rank_trials, summary_columns
from sweeps.search_space import budget_split, is_default_config, startup_trials, units_at_once

DPI = 110
TOP_CURVES = 5  # learning curves drawn
TOP_GRIDS = 4  # sample grids side by side
LOG_RATIO = 10  # a positive hyperparameter spanning this factor or more is shown on a log axis
FAILED_STYLE = {"marker": "x", "color": "tab:red", "s": 40, "linewidths": 1.5}
PAGE_ROWS = 20  # rows of the best-trials table on the page (the CSV has all)
# Importances from fewer finished trials are noise: with 3 trials the three evaluators disagreed on
# the ranking of 3 hyperparameters (issue 11). 8 is TPE's smallest random start-up and a few points
# per hyperparameter for fANOVA's trees and PED-ANOVA's top-quantile split; still a rough guide.
MIN_IMPORTANCE_TRIALS = 8
OPTUNA_STARTUP = 10  # TPE's start-up before sweeps sized it (options without no_default_first)


def config_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c.startswith("config/")]


def is_log_scale(values: pd.Series) -> bool:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(values)) and values.min() > 0 and values.max() / values.min() >= LOG_RATIO


def usable_mask(ranked: pd.DataFrame, metric: str) -> pd.Series:
    return ranked["status"].isin(USABLE) & ranked[metric].notna()


def best_rows(ranked: pd.DataFrame, metric: str, top: int) -> pd.DataFrame:
    """The `top` best trials that ended usable with the metric: never a failed, diverged or
    unfinished one, even when fewer than `top` finished."""
    return ranked[usable_mask(ranked, metric)].head(top)


def plot_metric_vs_hyperparameters(ranked: pd.DataFrame, metric: str, mode: str,
                                   path: Path) -> Path:
    columns = config_columns(ranked)
    fig = Figure(figsize=(4 * max(1, len(columns)), 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, max(1, len(columns)), squeeze=False)[0]
    good = usable_mask(ranked, metric)
    for ax, column in zip(axes, columns):
        x = pd.to_numeric(ranked[column], errors="coerce").astype("float64")
        points = ax.scatter(x[good], ranked.loc[good, metric], c=ranked.loc[good, metric],
                            cmap="viridis" if mode == "max" else "viridis_r", edgecolors="black",
                            linewidths=0.4)
        if (~good).any():  # failed / diverged / no value: crosses on the bottom edge
            ax.scatter(x[~good], np.full((~good).sum(), 0.02), transform=ax.get_xaxis_transform(),
                       label="failed, diverged or no value", **FAILED_STYLE)
            # A blended transform does not widen the x limits by itself.
            ax.update_datalim(np.column_stack([x[~good].dropna(), np.full(x[~good].notna().sum(),
                              ranked.loc[good, metric].max() if good.any() else 0.0)]))
            ax.autoscale_view()
            ax.legend(loc="best", fontsize=7)
        if is_log_scale(ranked[column]):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short spans
        ax.set_xlabel(column.removeprefix("config/"))
        ax.set_ylabel(f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)")
        ax.grid(alpha=0.3)
    if not columns:
        axes[0].text(0.5, 0.5, "no hyperparameters in the table", ha="center")
    elif good.any():
        fig.colorbar(points, ax=axes.tolist(), label=metric)
    fig.suptitle(f"{metric} against each hyperparameter ({good.sum()} of {len(ranked)} trials)")
    fig.savefig(path)
    return path


def plot_learning_curves(ranked: pd.DataFrame, history: pd.DataFrame, metric: str,
                         path: Path, top: int = TOP_CURVES) -> Path:
    fig = Figure(figsize=(6.5, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    curves = history[history["metric"] == metric]
    best = best_rows(ranked, metric, top)
    for _, row in best.iterrows():
        curve = curves[curves["trial_id"] == row["trial_id"]].sort_values("epoch")
        if curve.empty:
            continue
        ax.plot(curve["epoch"].astype(float), curve["value"], "-", marker="o", markersize=3,
                label=f"#{row['rank']} {row['trial_id']} ({row['status']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, top {len(best)} finished trials")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no trial reported {metric}", ha="center", transform=ax.transAxes)
    fig.savefig(path)
    return path


def normalized(values: pd.Series) -> pd.Series:
    """To [0, 1] on the axis's own scale (log for wide positive ranges); constant -> 0.5."""
    values = pd.to_numeric(values, errors="coerce").astype("float64")
    if is_log_scale(values):
        values = np.log10(values)
    low, high = values.min(), values.max()
    if not np.isfinite(low) or high == low:
        return values * 0 + 0.5
    return (values - low) / (high - low)


def plot_parallel_coordinates(ranked: pd.DataFrame, metric: str, mode: str, path: Path) -> Path:
    """One line per trial through each hyperparameter's axis and the metric's, colored by the
    metric; a trial with no value (failed, diverged) ends at the bottom of the metric axis, red."""
    axes_names = [*config_columns(ranked), metric]
    fig = Figure(figsize=(1.8 * len(axes_names) + 2, 4.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    scaled = pd.DataFrame({c: normalized(ranked[c]) for c in axes_names})
    good = usable_mask(ranked, metric)
    scaled.loc[~good, metric] = -0.05
    score = scaled[metric] if mode == "max" else 1 - scaled[metric]
    colors = colormaps["viridis"]
    xs = np.arange(len(axes_names))
    for index in scaled.index[::-1]:  # best drawn last, on top
        if good[index]:
            ax.plot(xs, scaled.loc[index], color=colors(float(score[index])), alpha=0.85, lw=1.4)
        else:
            ax.plot(xs, scaled.loc[index], color="tab:red", ls=":", alpha=0.8, lw=1.2)
    for x, name in zip(xs, axes_names):
        ax.axvline(x, color="black", lw=0.8)
        values = pd.to_numeric(ranked[name], errors="coerce")
        low, high = values.min(), values.max()
        ax.annotate(f"{high:.3g}", (x, 1.0), xytext=(3, 2), textcoords="offset points", fontsize=7)
        ax.annotate(f"{low:.3g}", (x, 0.0), xytext=(3, -9), textcoords="offset points", fontsize=7)
    ax.set_xticks(xs, [n.removeprefix("config/") for n in axes_names])
    ax.set_yticks([])
    ax.set_ylim(-0.1, 1.08)
    ax.set_xlim(-0.2, len(axes_names) - 0.5)  # room for the last axis's value labels
    ax.set_title(f"trials across the hyperparameters (bright: best {metric}; red dotted: failed "
                 "or no value)")
    fig.savefig(path)
    return path


def study_from_trials(ranked: pd.DataFrame, metric: str, mode: str):
    """An in-memory Optuna study holding one trial per sweep trial: COMPLETE with the metric as its
    value, FAIL for the others. Distributions span the values seen (log for wide ranges)."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    distributions = {}
    for column in config_columns(ranked):
        values = ranked[column].dropna()
        if values.nunique() < 2 or not pd.api.types.is_numeric_dtype(values):
            continue  # a constant (or non-numeric) hyperparameter carries no importance
        name, log = column.removeprefix("config/"), is_log_scale(values)
        if pd.api.types.is_integer_dtype(values):
            distributions[name] = IntDistribution(int(values.min()), int(values.max()), log=log)
        else:
            distributions[name] = FloatDistribution(float(values.min()), float(values.max()), log=log)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line; restored
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    good = usable_mask(ranked, metric)
    for index, row in ranked.iterrows():
        params = {n: (int(row[f"config/{n}"]) if isinstance(d, IntDistribution)
                      else float(row[f"config/{n}"])) for n, d in distributions.items()
                  if pd.notna(row[f"config/{n}"])}
        used = {n: distributions[n] for n in params}
        if good[index] and len(params) == len(distributions):
            study.add_trial(create_trial(params=params, distributions=used,
                                         value=float(row[metric])))
        else:
            study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=used))
    return study, list(distributions)


def importances(ranked: pd.DataFrame, metric: str, mode: str,
                min_trials: int = MIN_IMPORTANCE_TRIALS) -> tuple[pd.DataFrame, list[str]]:
    """Hyperparameter -> importance under each of Optuna's evaluators, plus a message per evaluator
    that could not run; none at all, with the reason, below `min_trials` finished trials."""
    from optuna.importance import (
        FanovaImportanceEvaluator,
        MeanDecreaseImpurityImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    study, names = study_from_trials(ranked, metric, mode)
    complete = int(usable_mask(ranked, metric).sum())
    evaluators = {"PED-ANOVA": PedAnovaImportanceEvaluator(), "fANOVA": FanovaImportanceEvaluator(seed=0),
                  "mean decrease impurity": MeanDecreaseImpurityImportanceEvaluator(seed=0)}
    table, messages = pd.DataFrame(index=pd.Index(names, name="hyperparameter")), []
    if not names:
        return table, ["no hyperparameter took more than one value: nothing to attribute"]
    if complete < max(2, min_trials):
        return table, [f"importances need at least {max(2, min_trials)} finished trials with "
                       f"{metric}; this sweep has {complete}"]
    for label, evaluator in evaluators.items():
        try:
            scores = get_param_importances(study, evaluator=evaluator)
        except Exception as err:  # each evaluator has its own minimum; report, don't fail
            messages.append(f"{label}: could not run on {complete} finished trials ({err})")
            continue
        table[label] = pd.Series(scores, dtype="float64")
    return table, messages


def plot_importances(table: pd.DataFrame, messages: list[str], path: Path) -> Path:
    fig = Figure(figsize=(6.5, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    if table.shape[1]:
        table.plot.barh(ax=ax)
        ax.set_xlabel("importance (normalized to sum 1 per evaluator)")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "\n".join(messages) or "no importances", ha="center", va="center",
                wrap=True, fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("hyperparameter importances (Optuna)")
    fig.savefig(path)
    return path


def final_grid(row: pd.Series, source: dict, cache: Path) -> Path | None:
    """The trial's last sample grid: samples/epoch_NNN.png in its folder, else (a folder on
    another machine) the last `samples` image of its MLflow run."""
    folder = row.get("figures_dir")
    if isinstance(folder, str):
        folder = local_trial_folder(folder, cache)  # a sweep on cloud storage: its images, copied
        grids = sorted((folder / "samples").glob("epoch_*.png"))
        if grids:
            return grids[-1]
    run_id = row.get("run_id")
    if not isinstance(run_id, str) or "uri" not in source:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(source["uri"])
    images = [a.path for a in client.list_artifacts(run_id, "images")
              if a.path.endswith(".png") and "+step+" in a.path]
    if not images:
        return None
    last = max(images, key=lambda p: int(p.split("+step+")[1].split("+")[0]))
    return Path(client.download_artifacts(run_id, last, str(cache)))


def plot_sample_grids(ranked: pd.DataFrame, metric: str, source: dict, path: Path,
                      top: int = TOP_GRIDS) -> Path:
    from matplotlib.image import imread

    rows = [row for _, row in best_rows(ranked, metric, top).iterrows()]
    with tempfile.TemporaryDirectory() as cache:  # grids fetched from MLflow, read, then dropped
        grids = [final_grid(row, source, Path(cache)) for row in rows]
        images = [None if grid is None else imread(grid) for grid in grids]
    fig = Figure(figsize=(3.2 * max(1, len(rows)), 3.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, max(1, len(rows)), squeeze=False)[0]
    for ax, row, image in zip(axes, rows, images):
        if image is not None:
            ax.imshow(image, cmap="gray")
        else:
            ax.text(0.5, 0.5, "no sample grid", ha="center", transform=ax.transAxes)
        value = row[metric]
        ax.set_title(f"#{row['rank']} {row['trial_id']}\n{metric} "
                     f"{'n/a' if pd.isna(value) else f'{value:.4g}'} ({row['status']})", fontsize=8)
        ax.set_axis_off()
    if not rows:
        axes[0].text(0.5, 0.5, "no trial finished", ha="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    fig.suptitle("final sample grids of the best finished trials")
    fig.savefig(path)
    return path


def sweep_options(sweep: Sweep) -> dict:
    """The options the sweep ran with: its gensweep_options.json (Ray's folder), else the parent
    run's params (MLflow); {} when neither is there."""
    options = sweep.source.get("options")
    if options or not sweep.source.get("parent_run_id"):
        return options or {}
    from mlflow.tracking import MlflowClient

    from analysis.mlflow_runs import parse_param

    run = MlflowClient(sweep.source["uri"]).get_run(sweep.source["parent_run_id"])
    return {k: parse_param(v) for k, v in run.data.params.items()}


def default_rows(ranked: pd.DataFrame, model: str) -> pd.DataFrame:
    """The trials that ran the seed's default configuration (the first trial of a sweep)."""
    if ranked.empty or model is None:
        return ranked.iloc[:0]
    return ranked[ranked.apply(is_default_config, axis=1, model=model)]


def search_notes(ranked: pd.DataFrame, metric: str, mode: str, model: str,
                 options: dict) -> list[str]:
    """How the sweep chose its configurations, and how the best compares with the default."""
    notes = []
    defaults = default_rows(ranked, model)
    num = options.get("num_samples")
    if isinstance(num, int) and num > 0:
        sized = "no_default_first" in options  # sweeps since the default ran first
        startup = startup_trials(num) if sized else OPTUNA_STARTUP
        fuse = options.get("fuse") or 1
        # what the sweep ran at once: recorded since 2026-11-28 (at_once); before, --max-concurrent
        at_once = options.get("at_once") or options.get("max_concurrent")
        if at_once:
            at_once = units_at_once(at_once, num, fuse)
        refill = fuse > 1 and bool(options.get("refill"))  # since 2026-11-28
        split = budget_split(num, not defaults.empty, startup, at_once or 1, fuse, refill)
        unit = ("configurations" if fuse == 1 else "configurations in one group" if num <= fuse
                else f"configurations in groups of {fuse}"
                + (", each slot refilled as its member ended" if refill and num > fuse * (at_once or 1)
                   else ""))
        recorded = ranked["sampled"].dropna() if "sampled" in ranked else ranked.iloc[:0]
        if len(recorded):  # the sweep counted them from its Optuna study (sweeps/sampling.py)
            notes.append(recorded_budget(recorded, len(ranked), unit, startup))
        else:
            units = ("trial" if fuse == 1 else "group") + ("" if at_once == 1 else "s")
            ran = (f"{at_once} {units} ran at once" if at_once else
                   f"as many ran at once as fit, so more than {split.random} may have started at "
                   "random")
            older = "" if sized else " (Optuna default, before sweeps sized it)"
            notes.append(
                f"Search budget: {num} {unit}: {split.describe()}; {split.default + split.random} "
                f"of {num} ({(split.default + split.random) / num:.0%}) not guided by TPE. Derived "
                f"from TPE's start-up count{older}, not recorded per trial: TPE samples at random "
                f"until {startup} configurations have ended, and {ran}; a failed trial does not "
                "count as ended.")
    else:
        notes.append("Search budget: unknown (the sweep's options were not found).")
    best = best_rows(ranked, metric, 1)
    if defaults.empty:
        notes.append("No trial ran the seed's default configuration (--no-default-first, a range "
                     "that excludes it, or a sweep from before it ran first): no comparison.")
    elif not usable_mask(defaults, metric).any():
        row = defaults.iloc[0]
        notes.append(f"The default configuration (trial {row['trial_id']}) did not finish with "
                     f"{metric}: {row['status']}.")
    else:
        row = defaults[usable_mask(defaults, metric)].iloc[0]
        top = best.iloc[0]
        gain = (top[metric] - row[metric]) * (1 if mode == "max" else -1)
        verdict = (f"the best trial ({top['trial_id']}) beats it by {gain:.4g}" if gain > 0 else
                   "no trial beat it: the default is the sweep's best")
        early = (f" It was stopped early by the scheduler after {row.get('epochs', '?')} epoch(s), so its "
                 "value is not at the full budget." if row["status"] == "stopped_early" else "")
        notes.append(f"The default configuration (trial {row['trial_id']}) ranks #{row['rank']} "
                     f"with {metric} {row[metric]:.4g}; {verdict} (one seed each).{early}")
    return notes


def recorded_budget(sampled: pd.Series, trials: int, unit: str, startup: int) -> str:
    """The search budget as the sweep recorded it: `sampled`, each trial's default, random or
    guided (the column of that name), of `trials` in the table."""
    counts = sampled.value_counts()
    default, random, guided = (int(counts.get(kind, 0))
                               for kind in (DEFAULT_SAMPLED, RANDOM_SAMPLED, GUIDED_SAMPLED))
    parts = (["trial 1 the default"] if default else []) + [f"{random} random start-up",
                                                            f"{guided} guided"]
    missing = trials - len(sampled)
    return (f"Search budget: {trials} {unit}: {', '.join(parts)}; {default + random} of "
            f"{len(sampled)} ({(default + random) / len(sampled):.0%}) not guided by TPE. As the "
            f"sweep's Optuna study recorded them (column `sampled`): TPE samples at random until "
            f"{startup} configurations have ended (a failed one does not count), and guesses from "
            "those that had ended when it is asked"
            + (f"; {missing} not recorded (refills a killed driver's study lost)" if missing else "")
            + ".")


def html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0,
                         classes="trials")


def write_page(sweep: Sweep, ranked: pd.DataFrame, files: dict[str, Path],
               importance: pd.DataFrame, messages: list[str], path: Path,
               notes: list[str] = ()) -> Path:
    counts = ranked["status"].value_counts().to_dict()
    columns = summary_columns(ranked, sweep.metric)
    shown = best_rows(ranked, sweep.metric, PAGE_ROWS)[[c for c in columns if c != "error"]]
    defaults = set(default_rows(ranked, sweep.model)["trial_id"])
    shown.insert(2, "default", ["yes" if t in defaults else "" for t in shown["trial_id"]])
    apart = ranked[~usable_mask(ranked, sweep.metric)][columns]
    source = sweep.source.get("results") or f"MLflow experiment {sweep.source.get('experiment')} " \
                                                f"at {sweep.source.get('uri')}"

    def figure(key: str, caption: str) -> str:
        return (f'<figure><img src="{files[key].name}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    importance_html = html_table(importance.reset_index()) if importance.shape[1] else ""
    importance_notes = "".join(f"<li>{html.escape(m)}</li>" for m in messages)
    search_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    apart_html = (f"<h2>Not among the best: failed, diverged, unfinished or without "
                  f"{html.escape(sweep.metric)}</h2>{html_table(apart)}" if len(apart) else "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(sweep.name)}: sweep report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}img{{max-width:100%}}
table.trials{{border-collapse:collapse;font-size:13px}}table.trials td,table.trials th{{padding:2px 8px;
border-bottom:1px solid #ddd;text-align:right}}</style></head><body>
<h1>Sweep {html.escape(sweep.name)} ({sweep.model.upper()})</h1>
<p>Source: {html.escape(str(source))}. {len(ranked)} trials:
{html.escape(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))}. Ranked by
<b>{html.escape(sweep.metric)}</b> ({"higher" if sweep.mode == "max" else "lower"} is better);
failed, diverged and unfinished trials rank last. Full table: <a href="{files["csv"].name}">
{files["csv"].name}</a>.</p>
<h2>How the configurations were chosen</h2>{search_html}
<h2>Best trials</h2>{html_table(shown)}{apart_html}
<h2>The metric against each hyperparameter</h2>{figure("vs_hyperparameters", "metric vs hyperparameters")}
<h2>Learning curves</h2>{figure("learning_curves", "learning curves of the top trials")}
<h2>Parallel coordinates</h2>{figure("parallel_coordinates", "parallel coordinates")}
<h2>Hyperparameter importances</h2>{figure("importances", "importances")}{importance_html}
<ul>{importance_notes}</ul>
<h2>Samples of the best trials</h2>{figure("sample_grids", "final sample grids")}
</body></html>
"""
    path.write_text(page)
    return path


def write_report(sweep: Sweep, out_dir: str | Path, top: int = TOP_GRIDS,
                 scope: str = "last", say=None) -> dict[str, Path]:
    """Every file of the report in `out_dir`; returns name -> path (the page is "page").
    `say` (e.g. print) also gets the page's notes: the search budget, the default configuration
    against the best, and why importances are missing when they are."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked = rank_trials(sweep.trials, sweep.metric, sweep.mode, scope=scope, history=sweep.history)
    metric, mode = sweep.metric, sweep.mode
    files = {"csv": out / "ranked_trials.csv"}
    ranked.to_csv(files["csv"], index=False)
    files["vs_hyperparameters"] = plot_metric_vs_hyperparameters(
        ranked, metric, mode, out / "metric_vs_hyperparameters.png")
    files["learning_curves"] = plot_learning_curves(ranked, sweep.history, metric,
                                                    out / "learning_curves.png")
    files["parallel_coordinates"] = plot_parallel_coordinates(ranked, metric, mode,
                                                              out / "parallel_coordinates.png")
    table, messages = importances(ranked, metric, mode)
    files["importances_csv"] = out / "importances.csv"
    table.to_csv(files["importances_csv"])
    files["importances"] = plot_importances(table, messages, out / "importances.png")
    files["sample_grids"] = plot_sample_grids(ranked, metric, sweep.source,
                                              out / "best_sample_grids.png", top)
    notes = search_notes(ranked, metric, mode, sweep.model, sweep_options(sweep))
    files["page"] = write_page(sweep, ranked, files, table, messages, out / "report.html", notes)
    for line in (notes + messages) if say else ():
        say(line)
    return files
