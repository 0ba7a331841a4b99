"""A finished sweep's results page: what it found, against the seed's default, with the figures.

    gensweep-results --results runs/sweeps/vae-sweep
    python analysis/results_page.py --results runs/sweeps/gan-sweep --log-to-mlflow

Writes `results.md` (Markdown, relative image links) and its images to --out (default
reports/<sweep name>/, beside analysis/rank.py's report):
- the seed's figures (the last sample grid, samples across epochs, real vs reconstructed for the VAE
  or real vs generated for the GAN) of the best trial and of the default configuration's trial, each
  copied from its trial folder, and side by side in one composite PNG per figure,
- the learning curves: the validation objective per epoch of the best, the default and the top 5,
- the best trials with their validation objective and, where the sweep measured it, the test split,
- the search space and the sweep's options, and how many trials finished, were stopped or failed,
- the seed repeats (sweeps/repeats.py), when `repeats.csv` is in the folder.

A figure a trial folder lacks (deleted, or from a sweep made before trials that ASHA stopped early
drew theirs) is regenerated from the trial's last checkpoint when the data set is at hand
(--data-dir, else the sweep's).
`--log-to-mlflow` attaches the page and its files to the sweep's parent run under `results/`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

try:
    from analysis.load import LoadError, Sweep, load_sweep
except ModuleNotFoundError as err:  # run as a file from a checkout that was never installed
    if err.name != "analysis":
        raise
    sys.exit("error: the gensweep package is not installed in this Python: run `pip install -e .` "
             "in the checkout (or `python -m analysis.results_page` from its root)")
from genmodels.names import CHECKPOINT_FILE, STATUSES, TEST_METRICS, on_test_split
from results.folder import local_trial_folder
from results.ranking import USABLE, rank_trials
from sweeps.repeats import (
    RUNS_FILE,
    RepeatError,
    is_default_row,
    markdown_table,
    summarize,
    sweep_options,
    unit_of,
)

REPORTS_DIR = "reports"
PAGE_FILE = "results.md"
ARTIFACT_DIR = "results"  # where the page lands in the parent run's artifacts
TOP_CURVES = 5
TABLE_ROWS = 10
DPI = 110
WIDE_ASPECT = 2.0  # images wider than this (width / height) are stacked, not side by side
# The seed's figures, as a trial folder holds them: key -> (file in the folder, caption).
FIGURES = {
    "final_samples": (None, "samples from fixed noise after the last epoch"),
    "samples_across_epochs": ("samples_across_epochs.png", "samples from fixed noise, epoch by epoch"),
    "real_vs_reconstructed": ("real_vs_reconstructed.png", "real test images and their reconstructions"),
    "real_vs_generated": ("real_vs_generated.png", "real images and generated ones"),
}
MODEL_FIGURES = {"vae": ("final_samples", "samples_across_epochs", "real_vs_reconstructed"),
                 "gan": ("final_samples", "samples_across_epochs", "real_vs_generated")}
# sweep options shown on the page, in this order (the rest stays in gensweep_options.json)
SHOWN_OPTIONS = ("dataset", "epochs", "batch_size", "train_subset", "val_fraction", "num_samples",
                 "scheduler", "grace_period", "max_concurrent", "at_once", "cpus_per_trial", "seed", "metric",
                 "space", "fuse", "test_top")


# ---- the two trials ---------------------------------------------------------------------------
def trial_figure(folder: Path, key: str) -> Path | None:
    if key == "final_samples":
        grids = sorted((folder / "samples").glob("epoch_*.png"))
        return grids[-1] if grids else None
    path = folder / FIGURES[key][0]
    return path if path.exists() else None


def regenerate_figures(folder: Path, model: str, data_dir: str | None, out: Path) -> dict[str, Path]:
    """The end-of-run figures of a trial from its last checkpoint (the weights, the fixed noise's
    sample history), when its folder lacks them; {} when there is no checkpoint or no data."""
    checkpoints = sorted(folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    if not checkpoints:
        return {}
    from genmodels.data import DataError, load_dataset
    from genmodels.figures import save_run_figures
    from genmodels.loop import TrainConfig, Trainer, load_checkpoint_configs
    from genmodels.tasks import TASKS

    name, model_values, train_values = load_checkpoint_configs(checkpoints[-1])
    try:
        data = load_dataset(train_values["dataset"], data_dir)
    except (DataError, FileNotFoundError):
        return {}
    train_cfg = TrainConfig(**{**train_values, "device": "cpu"})
    trainer = Trainer.create(name, TASKS[name][0](**model_values), train_cfg, data)
    trainer.resume(checkpoints[-1])
    out.mkdir(parents=True, exist_ok=True)
    return save_run_figures(trainer, out)


def collect_figures(row: pd.Series, role: str, model: str, data_dir: str | None,
                    out: Path) -> dict[str, Path]:
    """The trial's figures copied into `out` as <role>_<figure>.png; key -> copied path."""
    folder = local_trial_folder(str(row["figures_dir"]), out / f".{role}_stored")
    found = {key: trial_figure(folder, key) for key in MODEL_FIGURES[model]}
    if any(path is None for key, path in found.items() if key != "final_samples"):
        regenerated = regenerate_figures(folder, model, data_dir, out / f".{role}_regenerated")
        found = {key: path or regenerated.get(key) for key, path in found.items()}
    copied = {}
    for key, path in found.items():
        if path is not None:
            copied[key] = out / f"{role}_{key}.png"
            shutil.copyfile(path, copied[key])
    for scratch in (f".{role}_regenerated", f".{role}_stored"):
        shutil.rmtree(out / scratch, ignore_errors=True)
    return copied


def side_by_side(left: Path | None, right: Path | None, titles: tuple[str, str], path: Path) -> Path:
    """Two images in one PNG, each with its title (matplotlib): left and right, or one above the
    other when they are wide (samples across ten epochs would be unreadable side by side)."""
    from matplotlib.image import imread

    images = [None if p is None else imread(p) for p in (left, right)]
    shapes = [im.shape for im in images if im is not None]
    aspect = max(s[1] / s[0] for s in shapes) if shapes else 1.0  # width / height
    stacked = aspect > WIDE_ASPECT
    width = 14 if stacked else 10
    panel_height = (width if stacked else width / 2) / aspect
    fig = Figure(figsize=(width, panel_height * (2 if stacked else 1) + 0.8), dpi=DPI,
                 layout="constrained")
    for ax, image, title in zip(fig.subplots(2, 1) if stacked else fig.subplots(1, 2), images, titles):
        if image is None:
            ax.text(0.5, 0.5, "not available", ha="center", transform=ax.transAxes)
        else:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.savefig(path)
    return path


def plot_curves(ranked: pd.DataFrame, history: pd.DataFrame, metric: str, best: pd.Series,
                default: pd.Series | None, path: Path, top: int = TOP_CURVES) -> Path:
    """The objective per epoch: the top `top` trials thin, the best and the default bold."""
    fig = Figure(figsize=(7, 4.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    curves = history[history["metric"] == metric]

    def curve(trial_id: str) -> pd.DataFrame:
        return curves[curves["trial_id"] == trial_id].sort_values("epoch")

    usable = ranked[ranked["status"].isin(USABLE)]
    bold = {best["trial_id"], None if default is None else default["trial_id"]}
    for _, row in usable.head(top).iterrows():
        if row["trial_id"] in bold:
            continue
        c = curve(row["trial_id"])
        ax.plot(c["epoch"].astype(float), c["value"], lw=0.9, alpha=0.7, marker=".",
                label=f"#{row['rank']} {row['trial_id']}")
    c = curve(best["trial_id"])
    ax.plot(c["epoch"].astype(float), c["value"], lw=2.4, color="tab:blue", marker="o",
            label=f"best: #{best['rank']} {best['trial_id']}")
    if default is not None:
        c = curve(default["trial_id"])
        ax.plot(c["epoch"].astype(float), c["value"], lw=2.4, ls="--", color="black", marker="s",
                label=f"default: #{default['rank']} {default['trial_id']} ({default['status']})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (validation split)")
    ax.set_title(f"{metric} per epoch: best, default and top {top}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path)
    return path


# ---- the page ---------------------------------------------------------------------------------
def trials_table(ranked: pd.DataFrame, sweep: Sweep, rows: int = TABLE_ROWS) -> pd.DataFrame:
    test = [c for c in TEST_METRICS[sweep.model] if c in ranked and ranked[c].notna().any()]
    configs = [c for c in ranked if c.startswith("config/")]
    shown = ranked.head(rows)
    table = shown[["rank", "trial_id", "status", *configs, sweep.metric, *test, "epochs"]].copy()
    table.insert(2, "default", ["yes" if is_default_row(r, sweep.model) else ""
                                for _, r in shown.iterrows()])
    return table.rename(columns=lambda c: c.removeprefix("config/")).astype(
        {"rank": "float64", "epochs": "float64"}).astype({"rank": "Int64", "epochs": "Int64"})


def space_lines(model: str, options: dict, ranked: pd.DataFrame) -> list[str]:
    from sweeps.search_space import SPACES, describe, load_overrides, search_space

    space, note = SPACES[model], "the default ranges of this checkout"
    if options.get("space"):
        try:
            space = search_space(model, load_overrides(options["space"]))
            note = f"the default ranges with {options['space']} applied"
        except (FileNotFoundError, ValueError) as err:
            note = f"the default ranges of this checkout ({options['space']} unreadable: {err})"
    seen = [f"{c.removeprefix('config/')} {ranked[c].min():.3g} .. {ranked[c].max():.3g}"
            for c in ranked if c.startswith("config/")]
    return [f"Search space ({note}):", "", "```", describe(model, space), "```", "",
            "Values the trials took: " + "; ".join(seen) + "."]


def write_page(sweep: Sweep, out: str | Path, data_dir: str | None = None,
               preamble: str = "") -> dict[str, Path]:
    """Every file of the page in `out`; returns name -> path ("page": results.md)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = sweep_options(Path(sweep.source["results"]))
    ranked = rank_trials(sweep.trials, sweep.metric, sweep.mode, history=sweep.history)
    usable = ranked[ranked["status"].isin(USABLE) & ranked[sweep.metric].notna()]
    if usable.empty:
        raise RepeatError(f"no trial of {sweep.name} finished with {sweep.metric}: no results page")
    best = usable.iloc[0]
    defaults = [r for _, r in ranked.iterrows() if is_default_row(r, sweep.model)]
    default = defaults[0] if defaults else None
    direction = "higher" if sweep.mode == "max" else "lower"
    test_metric = on_test_split(sweep.metric)
    files: dict[str, Path] = {}
    figures = {"best": collect_figures(best, "best", sweep.model, data_dir, out)}
    if default is not None and default["trial_id"] != best["trial_id"]:
        figures["default"] = collect_figures(default, "default", sweep.model, data_dir, out)
    for key in MODEL_FIGURES[sweep.model]:
        files[f"compare_{key}"] = side_by_side(
            figures["best"].get(key), figures.get("default", {}).get(key),
            (f"best: {best['trial_id']}", "default: " + (default["trial_id"] if default is not None
                                                         else "not a trial of this sweep")),
            out / f"compare_{key}.png")
    files["curves"] = plot_curves(ranked, sweep.history, sweep.metric, best, default,
                                  out / "results_learning_curves.png")
    for role in figures:
        files.update({f"{role}_{k}": p for k, p in figures[role].items()})

    def number(row, column) -> str:
        return "not measured" if column not in row or pd.isna(row[column]) else f"{row[column]:.4g}"

    counts = ranked["status"].value_counts()
    lines = [f"# Results of sweep {sweep.name} ({sweep.model.upper()})", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    lines += [
        f"{len(ranked)} trials: " + ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if s in counts)
        + f". Chosen by **{sweep.metric}** on the validation split ({direction} is better); the "
        f"test split was measured once, after the sweep, for its best trials only.", "",
        f"- **Best trial** {best['trial_id']}: {sweep.metric} {best[sweep.metric]:.4g}, "
        f"{test_metric} {number(best, test_metric)} ({best['status']}, {int(best['epochs'])} epochs).",
    ]
    if default is None:
        lines += ["- **The default configuration was not among this sweep's trials** (a sweep from "
                  "before the default-first trial, --no-default-first, or a --space that excludes "
                  "it): the figures show the best trial only. `sweeps/repeats.py` trains the "
                  "default anyway."]
    else:
        value = default[sweep.metric]
        lines += [f"- **Default configuration** trial {default['trial_id']} (rank {default['rank']}): "
                  f"{sweep.metric} {'n/a' if pd.isna(value) else f'{value:.4g}'}, {test_metric} "
                  f"{number(default, test_metric)} ({default['status']}, {int(default['epochs'])} "
                  f"epochs)."]
        if pd.notna(value):
            gain = (best[sweep.metric] - value) * (1 if sweep.mode == "max" else -1)
            unit = unit_of(sweep.metric)
            lines += [f"- On the validation split the best trial is {gain:.4g}{' ' + unit if unit else ''} "
                      "better than the default "
                      "(one seed each; the seed repeats below say whether that holds)."]
        if default["status"] != "finished":
            lines += [f"- The default trial did not run the whole budget ({default['status']} after "
                      f"{int(default['epochs'])} of {options.get('epochs')} epochs)."]
    lines += ["", "## Figures: the best trial and the default configuration's", "",
              "Each composite: the best trial first (left or above), the default second.", ""]
    for key in MODEL_FIGURES[sweep.model]:
        lines += [f"### {FIGURES[key][1].capitalize()}", "",
                  f"![{key}, best and default]({files[f'compare_{key}'].name})", ""]
        single = [f"[{role}]({figures[role][key].name})" for role in figures if key in figures[role]]
        if single:
            lines += ["Single images: " + ", ".join(single) + ".", ""]
    lines += ["## Learning curves", "", f"![learning curves]({files['curves'].name})", "",
              f"## Best trials ({sweep.metric}: validation; test_*: test split, where measured)", "",
              markdown_table(trials_table(ranked, sweep)), ""]
    repeats = out / RUNS_FILE
    if repeats.exists():
        table, sentence = summarize(pd.read_csv(repeats))
        lines += ["## Seed repeats", "", f"From [{RUNS_FILE}]({RUNS_FILE}) (sweeps/repeats.py): "
                  "each configuration trained again with other seeds, the same seeds for each.", "",
                  markdown_table(table), "", f"**{sentence[0].upper() + sentence[1:]}.**", ""]
        files["repeats"] = repeats
    else:
        lines += ["## Seed repeats", "", "Not run: `python sweeps/repeats.py --results "
                  f"{sweep.source['results']}` writes {RUNS_FILE} here; run this page again after.", ""]
    lines += ["## Search space and options", "", *space_lines(sweep.model, options, ranked), "",
              "| option | value |", "|---|---|",
              *[f"| {k} | {options[k]} |" for k in SHOWN_OPTIONS if k in options], ""]
    files["page"] = out / PAGE_FILE
    files["page"].write_text("\n".join(lines))
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python analysis/results_page.py", description=(
        "Write a finished sweep's results page (results.md and its figures): best against default."))
    p.add_argument("--results", required=True, help="the sweep's folder: <--storage-path>/<--name>")
    p.add_argument("--out", default=None, help=f"report folder (default {REPORTS_DIR}/<sweep name>)")
    p.add_argument("--data-dir", default=None,
                   help="data, only to regenerate a figure a trial lacks (default: the sweep's)")
    p.add_argument("--preamble", default=None, help="a Markdown file put under the page's title")
    p.add_argument("--mlflow-uri", default=None,
                   help="tracking server or store (default: the sweep's, else ./mlflow.db)")
    p.add_argument("--log-to-mlflow", action="store_true",
                   help=f"attach the page to the sweep's parent run under {ARTIFACT_DIR}/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = load_sweep(args.results)
        options = sweep_options(Path(args.results).expanduser())
        preamble = Path(args.preamble).read_text() if args.preamble else ""
        out = Path(args.out or Path(REPORTS_DIR) / sweep.name)
        files = write_page(sweep, out, args.data_dir or options.get("data_dir"), preamble)
    except (LoadError, RepeatError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results page: {files['page']}")
    if args.log_to_mlflow:
        from analysis.rank import attach_to_parent

        try:
            uri, run_id = attach_to_parent(sweep, args.mlflow_uri, list(files.values()), ARTIFACT_DIR)
        except LoadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"page attached to MLflow run {run_id} under {ARTIFACT_DIR}/ ({uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
