#!/usr/bin/env bash
# make demo-down: stop the gateway, the replica stand-ins, the operator, the host kubelet and the simulator started
# by make demo, then delete the demo cluster (down.sh also ends the host kubelet's containers).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
NAME=${SLM_DEMO_CLUSTER:-slm-demo}
export SLM_CLUSTER_DIR=${SLM_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/clusters/$NAME}
pids=()
for name in gateway replicas operator hostkubelet nvsim; do
  pidf="$SLM_CLUSTER_DIR/$name.pid"
  if [ -f "$pidf" ]; then
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$pidf"
  fi
done
# wait (up to 30 s) until they have stopped, so none outlives its cluster and talks to the next one
deadline=$(($(date +%s) + 30))
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
done
"$repo/e2e/cluster/down.sh" "$NAME"
