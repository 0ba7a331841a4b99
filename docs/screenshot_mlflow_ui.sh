#!/usr/bin/env bash
# The browser check of the MLflow UI (outside the unit tests: it needs Debian's chromium).
#   apt-get install -y chromium
#   bash docs/screenshot_mlflow_ui.sh /path/with/mlflow.db EXPERIMENT_NAME
# Opens `mlflow ui` on the sweep's store and saves three screenshots of a real headless Chromium:
# the sweep's trials ranked by the objective, their validation curves per epoch, and the best
# trial's samples-across-epochs figure.
#
# The view: MLflow nests a sweep's trials under its parent run, collapsed, until the list is sorted.
# The script saves a shared view on the experiment (the UI's own "share view" mechanism: an
# experiment tag `mlflow.sharedViewState.gensweep` holding the view as JSON) that sorts by the
# sweep's objective, shows its validation and test numbers and the searched parameters as columns,
# and charts the val_* metrics; the link is printed, for a browser of your own.
set -euo pipefail
store="$(cd "$1" && pwd)/mlflow.db"; name="$2"; port=5055; out="$(dirname "$0")"
mlflow ui --backend-store-uri "sqlite:///$store" --host 127.0.0.1 --port $port >/dev/null 2>&1 &
server=$!; trap 'kill $server' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 1; done
read -r exp run < <(python - "$store" "$name" <<'PY'
import json
import sys

from mlflow.tracking import MlflowClient

from genmodels.names import DIRECTIONS

client = MlflowClient(f"sqlite:///{sys.argv[1]}")
exp = client.get_experiment_by_name(sys.argv[2]).experiment_id
parent = client.search_runs([exp], "params.metric != 'x'",
                            max_results=1)[0]
metric = parent.data.params["metric"]
trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                            order_by=[f"metrics.`{metric}` {'ASC' if DIRECTIONS[metric] == 'min' else 'DESC'}"])
best = next(t for t in trials if t.data.tags.get("gensweep.status") == "finished")
test = metric.replace("val_", "test_")
params = sorted(k for k in best.data.params if k in ("latent_dim", "dropout", "lr", "lr_g", "lr_d"))
view = {
    "orderByKey": f"metrics.`{metric}`", "orderByAsc": DIRECTIONS[metric] == "min",
    "selectedColumns": [f"metrics.`{metric}`", f"metrics.`{test}`", "tags.`gensweep.status`"]
                       + [f"params.`{p}`" for p in params],
    "chartsSearchFilter": "val_",
}
client.set_experiment_tag(exp, "mlflow.sharedViewState.gensweep", json.dumps(view))
print(exp, best.info.run_id)
PY
)
view="http://127.0.0.1:$port/#/experiments/$exp/runs?workflowType=machine_learning&viewStateShareKey=gensweep"
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1700,950 --virtual-time-budget=60000 \
    --screenshot="$1" "$2" >/dev/null 2>&1
}
shot "$out/mlflow-ui-runs.png" "$view"
shot "$out/mlflow-ui-charts.png" "$view&compareRunsMode=CHART"
shot "$out/mlflow-ui-trial-figure.png" \
  "http://127.0.0.1:$port/#/experiments/$exp/runs/$run/artifacts/figures/samples_across_epochs.png"
echo "wrote $out/mlflow-ui-runs.png, $out/mlflow-ui-charts.png and $out/mlflow-ui-trial-figure.png"
echo "the view: $view"
