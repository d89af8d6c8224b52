#!/usr/bin/env bash
# Runs a config through `ray job submit` against a local Ray head on 127.0.0.1, the same way a user
# submits to a real cluster, then stops the head.
#   bash cluster/local_job_submit.sh configs/quickstart.yaml [section.key=value ...]
# Data and MLflow paths are passed as absolute paths: a submitted job runs in a copy of the working dir.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: $0 CONFIG [overrides...]}; shift
port=${RAY_PORT:-6390}; dash=${RAY_DASHBOARD_PORT:-8290}
data=${LOOPDISTILL_DATA:-$(cd .. && pwd)/shared/data}
ray start --head --node-ip-address=127.0.0.1 --port="$port" --dashboard-host=127.0.0.1 \
  --dashboard-port="$dash" --num-cpus="${RAY_NUM_CPUS:-4}" --include-dashboard=true --disable-usage-stats
trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
RAY_ADDRESS="http://127.0.0.1:$dash" ray job submit --runtime-env cluster/runtime_env.yaml --working-dir . -- \
  python -m drivers.cli run "$config" \
  "task.data_path=$data/game24/24.csv" "tracking.output_dir=$PWD/runs" "$@"
