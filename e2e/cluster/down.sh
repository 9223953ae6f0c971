#!/usr/bin/env bash
# Stops and removes a cluster made by up.sh: kwokctl delete cluster (ends every component process), the host
# kubelet's containers still running (e2e/hostkubelet), then the cluster folder (kubeconfig, PKI, etcd data,
# logs, the hostPath volumes). Usage: e2e/cluster/down.sh [NAME]   (default NAME: slm)
set -euo pipefail
NAME=${1:-slm}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"
if [ -d "$KWOK_CLUSTER_DIR" ]; then
  kwokctl delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG_PATH" >&2 || true
fi
left=$(cluster_pids)
if [ -n "$left" ]; then  # kwokctl could not stop them (e.g. a broken pid file): end exactly those pids
  echo "stopping leftover processes $left" >&2
  kill $left 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(cluster_pids)" ] && break; sleep 0.1; done
  left=$(cluster_pids); [ -z "$left" ] || kill -9 $left 2>/dev/null || true
fi
left=$(container_pids)
if [ -n "$left" ]; then  # the host kubelet's shims outlive it; their containers die with the cluster
  echo "stopping leftover host-kubelet containers $left" >&2
  for p in $left; do kill -KILL -- "-$p" 2>/dev/null || true; done
fi
rm -rf "$CLUSTER_DIR"
echo "cluster $NAME removed" >&2
