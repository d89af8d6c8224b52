#!/usr/bin/env bash
# Runs a config through `ray job submit` against a local Ray head on 127.0.0.1, the same way a user
# submits to a real cluster, then stops that head (only it: other Ray instances on the machine live on).
#   bash cluster/local_job_submit.sh configs/quickstart.yaml [section.key=value ...]
# The MLflow path (and a data file, LOOPDISTILL_DATA_PATH=FILE) are passed as absolute paths: a submitted
# job runs in a copy of the working dir. The quickstart generates its data, so it needs none.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: $0 CONFIG [overrides...]}; shift
port=${RAY_PORT:-6390}; dash=${RAY_DASHBOARD_PORT:-8290}
agent=${RAY_AGENT_PORT:-$((dash + 1))}  # not Ray's fixed default 52365, which another local Ray may hold
data_override=()
[ -z "${LOOPDISTILL_DATA_PATH:-}" ] || data_override=("task.data_path=$LOOPDISTILL_DATA_PATH")
# Ray's token authentication: the head and `ray job submit` both read ~/.ray/auth_token.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
[ "$RAY_AUTH_MODE" != token ] || [ -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ] || ray get-auth-token --generate >/dev/null
# `ray job stop` sends SIGTERM and SIGKILLs after this many seconds (Ray's default 3 s is too short for the
# driver to mark its MLflow run KILLED); the head's job supervisor reads it.
export RAY_JOB_STOP_WAIT_TIME_S=${RAY_JOB_STOP_WAIT_TIME_S:-60}
# `--block` keeps the head's processes under this one process group, so stopping the group stops this
# head alone (`ray stop` would stop every Ray instance on the machine).
setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$port" --dashboard-host=127.0.0.1 \
  --dashboard-port="$dash" --dashboard-agent-listen-port="$agent" --num-cpus="${RAY_NUM_CPUS:-4}" --include-dashboard=true --disable-usage-stats \
  --temp-dir="${RAY_TMPDIR:-/tmp/ray-jobsubmit-$port}" &
head_pid=$!
trap 'kill -TERM -- "-$head_pid" 2>/dev/null || true; wait "$head_pid" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -s -o /dev/null "http://127.0.0.1:$dash/api/version" && break  # any HTTP answer: it is up
  sleep 1
done
submit() {
  RAY_ADDRESS="http://127.0.0.1:$dash" ray job submit --runtime-env cluster/runtime_env.yaml --working-dir . -- \
    python -m drivers.cli run "$config" \
    "${data_override[@]}" "tracking.output_dir=$PWD/runs" "$@"
}
# A fresh head answers HTTP before its job agent is up ("No available agent"): submit again then.
for _ in $(seq 20); do
  set +e; out=$(submit "$@" 2>&1); rc=$?; set -e
  printf '%s\n' "$out"
  case "$out" in *"No available agent"*) sleep 3 ;; *) exit "$rc" ;; esac
done
exit 1
