"""bench_fused.py's results as a picture: trial-epochs per hour against the group size K, as
multiples of one unfused trial, one panel per JSON file (one run on one device).

    python bench/plot_fused.py bench/h200/fused-adam/round3-vae.json \
        bench/h200/members/gan-members.json --out docs/fused-throughput.png

In each panel:
- a line per fused layout and precision (the `convs` and `precision` of the rows), K on the x axis;
- a dashed line per row of P unfused trials run as P processes at once (packing), at its multiple;
- on a GPU, issue 12's targets as dotted lines: 10x one trial, and 3x what four packed trials do.
Every multiple is against the run's one unfused trial in fp32 (the default precision), so a bf16
line also carries what bf16 does for one trial alone. Rows a run reported as failed are left out.

Reads JSON only (matplotlib, no torch): it runs anywhere the results are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

DEFAULT_PRECISION = "fp32"  # rows written before bench_fused.py had --precisions are fp32
# Issue 12's GPU targets for a fused group: this many times one unfused trial's trial-epochs per
# hour, and this many times those of four unfused trials packed on the same GPU.
TARGET_VS_ONE, TARGET_VS_FOUR_PACKED, PACKED = 10.0, 3.0, 4
MODE = re.compile(r"^(unfused x|fused K=)(\d+)$")


def parse_run(run: dict, layouts: set[str] | None = None) -> dict:
    """The run's rows as the panel draws them: {"baseline", "graphs", "fused": {label: [(K,
    multiple)]}, "packed": {label: multiple}}, fused rows of the `layouts` only when given.
    Multiples are against the run's first unfused single trial in fp32."""
    rows = [r for r in run["rows"] if "error" not in r and "trial_epochs_per_hour" in r]
    # A run that timed steps both eagerly and as CUDA graphs (--graphs off,on) is drawn with graphs,
    # the default, on both sides.
    uses_graphs = "on" if any(r.get("graphs") == "on" for r in rows) else "off"
    rows = [r for r in rows if r.get("graphs", "off") == uses_graphs]
    singles = [r for r in rows if r["mode"] == "unfused x1"
               and r.get("precision", DEFAULT_PRECISION) == DEFAULT_PRECISION]
    if not singles:
        raise ValueError("the run has no unfused single trial in fp32 to compare against; "
                         "rerun bench_fused.py with --procs 1 (and --unfused-precisions fp32)")
    baseline = singles[0]["trial_epochs_per_hour"]
    fused: dict[str, list[tuple[int, float]]] = defaultdict(list)
    packed: dict[str, float] = {}
    for row in rows:
        kind, n = MODE.match(row["mode"]).groups()
        precision = row.get("precision", DEFAULT_PRECISION)
        multiple = row["trial_epochs_per_hour"] / baseline
        if kind == "fused K=":
            layout = row.get("convs", "auto")
            if layouts and layout not in layouts:
                continue
            label = f"fused, {precision}" + ("" if layout == "auto" else f", {layout}")
            fused[label].append((int(n), multiple))
        elif int(n) > 1:
            packed[f"{n} unfused trials packed, {precision}"] = multiple
    return {"baseline": baseline, "graphs": uses_graphs,
            "fused": {label: sorted(points) for label, points in fused.items()}, "packed": packed}


def is_gpu(device: str) -> bool:
    return not device.upper().startswith("CPU")


def draw(runs: list[tuple[str, dict, dict]], out: Path) -> None:
    """One panel per (name, run, parse_run(run)), written to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.6), squeeze=False)
    for ax, (name, run, parsed) in zip(axes[0], runs):
        models = sorted({r["model"] for r in run["rows"]})
        for label, points in parsed["fused"].items():
            ks, multiples = zip(*points)
            ax.plot(ks, multiples, marker="o", label=f"{label} (K = {ks[-1]}: {multiples[-1]:.1f}x)")
        for i, (label, multiple) in enumerate(parsed["packed"].items()):
            ax.axhline(multiple, color=f"C{7 + i % 3}", linestyle="--", linewidth=1,
                       label=f"{label} ({multiple:.1f}x)")
        ax.axhline(1.0, color="black", linewidth=0.8, label="one unfused trial, fp32 (1x)")
        four = parsed["packed"].get(f"{PACKED} unfused trials packed, {DEFAULT_PRECISION}")
        if is_gpu(run["device"]):
            ax.axhline(TARGET_VS_ONE, color="gray", linestyle=":", label="target: 10x one trial")
            if four is not None:
                ax.axhline(TARGET_VS_FOUR_PACKED * four, color="gray", linestyle="-.",
                           label=f"target: 3x four packed ({TARGET_VS_FOUR_PACKED * four:.1f}x)")
        ks = sorted({k for points in parsed["fused"].values() for k, _ in points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(bottom=0)
        graphs = ", steps as CUDA graphs" if parsed["graphs"] == "on" else ""
        ax.set(xlabel="members per fused group (K)",
               ylabel="trial-epochs per hour / one unfused trial's",
               title=f"{'/'.join(m.upper() for m in models)} on {run['device']}{graphs}\n"
                     f"1x = {parsed['baseline']:,.0f} trial-epochs/h ({name})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="bench_fused.py --json files, one panel each")
    p.add_argument("--out", default="fused-throughput.png", help="the PNG to write")
    p.add_argument("--layouts", default=None,
                   help="comma-separated fused GAN layouts to draw (default: every one in the run)")
    args = p.parse_args(argv)
    layouts = set(args.layouts.split(",")) if args.layouts else None
    runs = []
    for path in map(Path, args.json):
        name = f"{path.parent.name}/{path.name}"
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"cannot read {path}: {err}", file=sys.stderr)
            return 2
        try:
            runs.append((name, run, parse_run(run, layouts)))
        except ValueError as err:
            print(f"cannot draw {path}: {err}", file=sys.stderr)
            return 2
    draw(runs, Path(args.out))
    for name, _, parsed in runs:
        best = max(((m, label, k) for label, points in parsed["fused"].items()
                    for k, m in points), default=None)
        if best:
            print(f"{name}: best fused row {best[1]} at K = {best[2]}, {best[0]:.2f}x one trial")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
