#!/usr/bin/env bash
# The browser check of the MLflow UI (outside the unit tests: it needs Debian's chromium).
#   apt-get install -y chromium
#   bash docs/screenshot_mlflow_ui.sh /path/with/mlflow.db EXPERIMENT_NAME
# Opens `mlflow ui` on the sweep's store and saves two screenshots of a real headless Chromium:
# the sweep's runs, and one trial's samples-across-epochs figure.
set -euo pipefail
store="$(cd "$1" && pwd)/mlflow.db"; name="$2"; port=5055; out="$(dirname "$0")"
mlflow ui --backend-store-uri "sqlite:///$store" --host 127.0.0.1 --port $port >/dev/null 2>&1 &
server=$!; trap 'kill $server' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 1; done
read -r exp run < <(python - "$store" "$name" <<'PY'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}")
exp = client.get_experiment_by_name(sys.argv[2]).experiment_id
run = client.search_runs([exp], "tags.`gensweep.status` = 'finished'", max_results=1)[0]
print(exp, run.info.run_id)
PY
)
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1500,950 --virtual-time-budget=60000 \
    --screenshot="$1" "$2" >/dev/null 2>&1
}
shot "$out/mlflow-ui-runs.png" "http://127.0.0.1:$port/#/experiments/$exp/runs"
shot "$out/mlflow-ui-trial-figure.png" \
  "http://127.0.0.1:$port/#/experiments/$exp/runs/$run/artifacts/figures/samples_across_epochs.png"
echo "wrote $out/mlflow-ui-runs.png and $out/mlflow-ui-trial-figure.png"
