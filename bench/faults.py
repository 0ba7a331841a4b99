"""The fault report: every fault scenario of tests/test_faults.py run for real, one table.

    python bench/faults.py            # about 10 minutes on a 2-core CPU; prints a Markdown table

Each scenario (a killed trial worker, the driver stopped by SIGTERM or SIGKILL then resumed, the
tracking server away mid-sweep) is a slow test that injects its fault into a real sweep and checks
the outcome; while this script runs them, each also counts what the sweep kept (from its own folder
and MLflow) into a JSON line, and the table below is those lines. A scenario whose test failed is
listed as FAILED. Numbers go to docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT_ENV = "GENSWEEP_FAULT_REPORT"  # tests/test_faults.py writes faults.jsonl there
COLUMNS = [("scenario", "scenario"), ("injected", "injected"), ("outcome", "what the sweep did"),
           ("trials_requested", "trials requested"), ("trials_finished", "finished"),
           ("trials_diverged", "diverged"), ("trials_failed", "failed, with the reason"),
           ("trials_lost", "lost"), ("epochs_expected", "epochs expected"),
           ("epochs_found", "epochs in MLflow"), ("runs_running", "runs RUNNING"),
           ("duplicates", "duplicates"), ("longest_epoch_s", "longest epoch (s)")]


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, REPORT_ENV: folder, "PYTHONPATH": str(REPO)}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "slow", "-p",
                                 "no:cacheprovider", "tests/test_faults.py"],
                                cwd=REPO, env=env, capture_output=True, text=True)
        path = Path(folder) / "faults.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"\npytest: {summary}")
    if result.returncode != 0:
        print("FAILED scenarios (their assertions, not counted above):", file=sys.stderr)
        print(result.stdout[-5000:], file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
