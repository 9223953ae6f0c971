#!/usr/bin/env bash
# make demo-down: stop the operator, the simulator and the host kubelet started by make demo, then delete the demo
# cluster (down.sh also ends the host kubelet's containers).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
NAME=${SLM_DEMO_CLUSTER:-slm-demo}
export SLM_CLUSTER_DIR=${SLM_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/clusters/$NAME}
for name in operator hostkubelet nvsim; do
  pidf="$SLM_CLUSTER_DIR/$name.pid"
  if [ -f "$pidf" ]; then kill "$(cat "$pidf")" 2>/dev/null || true; rm -f "$pidf"; fi
done
"$repo/e2e/cluster/down.sh" "$NAME"
