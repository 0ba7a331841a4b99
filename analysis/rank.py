"""Rank a sweep's trials and write its report, in one command.

    gensweep-rank --results runs/sweeps/vae-sweep                    # the installed command
    python analysis/rank.py --results runs/sweeps/vae-sweep          # Ray Tune's results folder
    python analysis/rank.py --experiment gan-sweep                   # MLflow (./mlflow.db by default)
    python analysis/rank.py --experiment gan-sweep --metric val_inception_score --log-to-mlflow

Prints the top trials, writes the full ranked table as CSV and a report folder (figures and
report.html; see analysis/report.py), by default `reports/<sweep name>/`. With --log-to-mlflow the
report is attached to the sweep's parent run under `analysis/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    from analysis.load import LoadError, Sweep, load_sweep
except ModuleNotFoundError as err:  # run as a file from a checkout that was never installed
    if err.name != "analysis":
        raise
    sys.exit("error: the gensweep package is not installed in this Python: run `pip install -e .` "
             "in the checkout (or `python -m analysis.rank` from its root)")
from genmodels.names import DIRECTIONS, SWEEP_DIR_TAG, tracking_uri
from results.ranking import rank_trials, summary_columns

TOP_ROWS = 10
REPORTS_DIR = "reports"
ARTIFACT_DIR = "analysis"  # where the report lands in the parent run's artifacts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python analysis/rank.py", description=(
        "Rank a sweep's trials by the objective it optimized on the validation split (VAE "
        "val_elbo, GAN val_fcd unless the sweep or --metric says otherwise) and write the ranked "
        "CSV and a report with plots."))
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment: the sweep's --name")
    source.add_argument("--results", help="Ray Tune results folder: <--storage-path>/<--name>, "
                        "a local folder or a cloud URI (s3://...)")
    p.add_argument("--mlflow-uri", default=None,
                   help="tracking server or store (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--metric", default=None,
                   help=f"rank by this metric (default: the sweep's objective); known: "
                        f"{', '.join(sorted(DIRECTIONS))}")
    p.add_argument("--mode", choices=["max", "min"], default=None,
                   help="better direction, needed only for a metric not in the known list")
    p.add_argument("--scope", choices=["last", "best"], default="last",
                   help="rank by each trial's final value (default) or its best over the epochs")
    p.add_argument("--top", type=int, default=TOP_ROWS, help=f"rows printed (default {TOP_ROWS})")
    p.add_argument("--out", default=None, help=f"report folder (default {REPORTS_DIR}/<sweep name>)")
    p.add_argument("--log-to-mlflow", action="store_true",
                   help="attach the report to the sweep's parent run in MLflow")
    return p


def printed_table(ranked, metric: str, top: int) -> str:
    table = ranked[[c for c in summary_columns(ranked, metric) if c != "error"]].head(top)
    whole = table.select_dtypes("Int64").columns  # as floats, so missing prints as "-" too
    table = table.astype(dict.fromkeys(whole, "float64"))
    table = table.rename(columns=lambda c: c.removeprefix("config/"))
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")


def parent_run(sweep: Sweep, uri: str | None) -> tuple[str, str]:
    """(tracking URI, parent run id) of the sweep, from either source."""
    from mlflow.tracking import MlflowClient

    if sweep.source.get("parent_run_id"):
        return sweep.source["uri"], sweep.source["parent_run_id"]
    options = sweep.source.get("options", {})
    uri = tracking_uri(uri or options.get("mlflow_uri"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(options.get("name", sweep.name))
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{SWEEP_DIR_TAG}` = '{sweep.source['results']}'")
    if not runs:
        raise LoadError(f"--log-to-mlflow: no MLflow parent run of sweep {sweep.name!r} in {uri}; "
                        "pass the --mlflow-uri the sweep used")
    return uri, runs[0].info.run_id


def attach_to_parent(sweep: Sweep, uri: str | None, paths: list[Path],
                     artifact_dir: str) -> tuple[str, str]:
    """Log `paths` (files, or folders with all they hold) to the sweep's parent run under
    `artifact_dir`; returns (tracking URI, parent run id). LoadError if there is no parent run."""
    from mlflow.tracking import MlflowClient

    uri, run_id = parent_run(sweep, uri)
    client = MlflowClient(uri)
    for path in paths:
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path), artifact_dir)
        else:
            client.log_artifact(run_id, str(path), artifact_dir)
    return uri, run_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        print("error: --top must be at least 1", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.results, experiment=args.experiment, tracking_uri=args.mlflow_uri,
                           metric=args.metric, mode=args.mode)
        ranked = rank_trials(sweep.trials, sweep.metric, sweep.mode, scope=args.scope,
                             history=sweep.history)
    except (LoadError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from analysis.report import write_report  # matplotlib and Optuna only once the data is read

    # A sample grid kept only in MLflow is fetched with a progress bar per file: noise in this
    # command's printout (set the variable to true to see them).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    out = Path(args.out or Path(REPORTS_DIR) / sweep.name)
    print(f"{sweep.name} ({sweep.model}): {len(ranked)} trials ranked by {sweep.metric} "
          f"({'higher' if sweep.mode == 'max' else 'lower'} is better, {args.scope} value)")
    print(printed_table(ranked, sweep.metric, args.top))
    unusable = ranked[~ranked["status"].isin(("finished", "stopped_early"))]
    if len(unusable):
        print(f"{len(unusable)} trial(s) ranked last: "
              + ", ".join(f"{t} ({s})" for t, s in zip(unusable["trial_id"], unusable["status"])))
    files = write_report(sweep, out, scope=args.scope, say=print)  # + its notes
    print(f"ranked table: {files['csv']}")
    print(f"report: {files['page']}")
    if args.log_to_mlflow:
        try:
            uri, run_id = attach_to_parent(sweep, args.mlflow_uri, [out], ARTIFACT_DIR)
        except LoadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"report attached to MLflow run {run_id} under {ARTIFACT_DIR}/ ({uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
