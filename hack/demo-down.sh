#!/usr/bin/env bash
# make demo-down: stop the gateway, the replica stand-ins, the operator and the simulator started by make demo, then delete the demo cluster.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
NAME=${SLM_DEMO_CLUSTER:-slm-demo}
export SLM_CLUSTER_DIR=${SLM_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/clusters/$NAME}
for name in gateway replicas operator nvsim; do
  pidf="$SLM_CLUSTER_DIR/$name.pid"
  if [ -f "$pidf" ]; then kill "$(cat "$pidf")" 2>/dev/null || true; rm -f "$pidf"; fi
done
"$repo/e2e/cluster/down.sh" "$NAME"
