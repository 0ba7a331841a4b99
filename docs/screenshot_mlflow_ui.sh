#!/usr/bin/env bash
# The browser check of the MLflow UI (outside the unit tests: it needs Debian's chromium).
#   apt-get install -y chromium
#   bash docs/screenshot_mlflow_ui.sh /path/with/mlflow.db EXPERIMENT_NAME
# Opens `mlflow ui` on the sweep's store and saves three screenshots of a real headless Chromium:
# the sweep's trials ranked by the objective, their validation curves per epoch, and the best
# trial's samples-across-epochs figure.
#
# The view is the one every sweep saves on its experiment (`sweeps.mlflow_sweep.save_trials_view`:
# sorted by the objective, its validation and test numbers and the searched parameters as columns,
# charts of the val_* metrics), saved again here for sweeps made before it existed.
set -euo pipefail
store="$(cd "$1" && pwd)/mlflow.db"; name="$2"; port=5055; out="$(dirname "$0")"
mlflow ui --backend-store-uri "sqlite:///$store" --host 127.0.0.1 --port $port >/dev/null 2>&1 &
server=$!; trap 'kill $server' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 1; done
read -r exp run view < <(python - "$store" "$name" "$port" <<'PY'
import sys

from mlflow.tracking import MlflowClient

from genmodels.names import DIRECTIONS, FINISHED, MODEL_TAG, STATUS_TAG
from sweeps.search_space import SPACES
from sweeps.mlflow_sweep import save_trials_view, trials_view_link

uri = f"sqlite:///{sys.argv[1]}"
client = MlflowClient(uri)
exp = client.get_experiment_by_name(sys.argv[2]).experiment_id
runs = client.search_runs([exp])
parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)  # the sweep's run
metric, model = parent.data.params["metric"], parent.data.tags[MODEL_TAG]
mode = DIRECTIONS[metric]
save_trials_view(client, exp, metric, mode, list(SPACES[model]))  # sweeps made before it existed
trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                            order_by=[f"metrics.`{metric}` {'ASC' if mode == 'min' else 'DESC'}"])
best = next(t for t in trials if t.data.tags.get(STATUS_TAG) == FINISHED)
print(exp, best.info.run_id, trials_view_link(uri, exp).replace(":5000", ":" + sys.argv[3]))
PY
)
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1700,950 --virtual-time-budget=60000 \
    --screenshot="$1" "$2" >/dev/null 2>&1
}
shot "$out/mlflow-ui-runs.png" "$view"
shot "$out/mlflow-ui-charts.png" "$view&compareRunsMode=CHART"
shot "$out/mlflow-ui-trial-figure.png" \
  "http://127.0.0.1:$port/#/experiments/$exp/runs/$run/artifacts/figures/samples_across_epochs.png?workflowType=machine_learning"
echo "wrote $out/mlflow-ui-runs.png, $out/mlflow-ui-charts.png and $out/mlflow-ui-trial-figure.png"
echo "the view: $view"
