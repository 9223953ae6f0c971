#!/usr/bin/env bash
# Starts a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# the kwok controller, all bound to 127.0.0.1) with kwokctl's binary runtime, then creates the simulated GPU
# nodes of examples/nodes/. Usage: e2e/cluster/up.sh [NAME]   (default NAME: slm)
# Idempotent: on a running cluster it only reports it. The kubeconfig path is printed on the last line.
set -euo pipefail
NAME=${1:-slm}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
"$here/build.sh" >&2
# shellcheck source=env.sh
. "$here/env.sh"

if cluster_ready; then
  if ! grep -qF "$HOSTRUN_LABEL" "$KWOK_CLUSTER_DIR/kwok.yaml" 2>/dev/null; then
    echo "cluster $NAME runs kwok stages that do not skip pods labelled $HOSTRUN_LABEL (made by an older up.sh);" \
      "recreate it: e2e/cluster/down.sh $NAME" >&2
    exit 1
  fi
  if ! grep -qF -- "--manage-nodes-with-label-selector=$KWOK_NODE_LABEL" "$KWOK_CLUSTER_DIR/kwok.yaml" 2>/dev/null; then
    echo "cluster $NAME's kwok manages every node (made by an older up.sh); recreate it: e2e/cluster/down.sh $NAME" >&2
    exit 1
  fi
  if ! grep -qF -- "--enable-priority-and-fairness=true" "$KWOK_CLUSTER_DIR/kwok.yaml" 2>/dev/null; then
    echo "cluster $NAME runs kube-apiserver without API Priority and Fairness (made by an older up.sh);" \
      "recreate it: e2e/cluster/down.sh $NAME" >&2
    exit 1
  fi
  echo "cluster $NAME is already running ($(kc get nodes --no-headers 2>/dev/null | wc -l) nodes)" >&2
  echo "$KUBECONFIG_PATH"
  exit 0
fi
if [ -d "$KWOK_CLUSTER_DIR" ]; then  # left over (stopped, crashed): start from scratch
  echo "removing stale cluster $NAME" >&2
  "$here/down.sh" "$NAME" >&2
fi
mkdir -p "$CLUSTER_DIR"
start=$(date +%s)

wait_ready() {  # kube-apiserver /readyz ok within $1 seconds
  local deadline=$(($(date +%s) + $1))
  until [ "$(kc get --raw /readyz 2>/dev/null)" = ok ]; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
# kwokctl picks ports by scanning down from 32767, so two clusters created at the same time collide; give it
# six random free loopback ports instead (and retry once with new ones if a component still fails to start).
free_ports() {
  python3 -c 'import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}
create() {
  read -r p_api p_etcd p_peer p_kcm p_sched p_kwok < <(free_ports)
  cat >"$CLUSTER_DIR/kwokctl.yaml" <<YAML
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeApiserverBinary: $BIN/kube-apiserver
  kubeControllerManagerBinary: $BIN/kube-controller-manager
  kubeSchedulerBinary: $BIN/kube-scheduler
  kwokControllerBinary: $BIN/kwok
  etcdBinary: $BIN/etcd
  kubectlBinary: $BIN/kubectl
  kubeApiserverPort: $p_api
  etcdPort: $p_etcd
  etcdPeerPort: $p_peer
  kubeControllerManagerPort: $p_kcm
  kubeSchedulerPort: $p_sched
  kwokControllerPort: $p_kwok
  cacheDir: $CLUSTER_DIR/kwok/cache
  disableQPSLimits: true
  quietPull: true
  # Kubernetes' own node heartbeat timing (kubelet Lease 40 s renewed every 10 s; node lifecycle controller
  # checks every 5 s, NotReady after 40 s without a renewal) instead of kwokctl's default 5x slower one, so a
  # node that loses its kubelet goes NotReady within a test's time (e2e/test_faults.py)
  heartbeatFactor: 1
componentsPatches:
- name: etcd
  extraArgs:
  - key: unsafe-no-fsync
    value: "true"
# A Service range like kubeadm's, not kube-apiserver's default 10.0.0.0/24: every SLMDeployment has a Service, and
# 254 ClusterIPs left the 1,000-deployment bench-e2e with "failed to allocate a serviceIP ... range is full".
# API Priority and Fairness on, as on a real cluster (kwokctl's disableQPSLimits turns it and the inflight limits
# off): the Kubernetes defaults for the total concurrency it divides among priority levels (e2e/test_faults.py
# throttles the operator's ServiceAccount with a FlowSchema of its own)
- name: kube-apiserver
  extraArgs:
  - {key: service-cluster-ip-range, value: 10.96.0.0/16}
  - {key: enable-priority-and-fairness, value: "true", override: true}
  - {key: max-requests-inflight, value: "400", override: true}
  - {key: max-mutating-requests-inflight, value: "200", override: true}
# kwok plays the kubelet of the nodes labelled $KWOK_NODE_LABEL only: a test that removes the label takes the
# node's kubelet away (kwok stops renewing its Lease and stops acting on its pods, pkg/kwok/controllers/
# controller.go onNodeUnmanagedFunc), and the node goes NotReady as a real one does
- name: kwok-controller
  extraArgs:
  - key: manage-all-nodes
    value: "false"
    override: true
  - key: manage-nodes-with-label-selector
    value: "$KWOK_NODE_LABEL"
YAML
  kwokctl --config "$CLUSTER_DIR/kwokctl.yaml" create cluster --name "$NAME" --runtime binary \
    --kubeconfig "$KUBECONFIG_PATH" --timeout 100s --wait 90s >&2 && wait_ready 30
}
for attempt in 1 2; do
  if create; then break; fi
  echo "cluster $NAME did not come up (attempt $attempt); component logs: $KWOK_CLUSTER_DIR/logs" >&2
  tail -n 3 "$KWOK_CLUSTER_DIR"/logs/*.log >&2 || true
  [ $attempt -lt 2 ] || exit 1
  "$here/down.sh" "$NAME" >&2
  mkdir -p "$CLUSTER_DIR"
done

# kwok's pod stages must leave the pods the host kubelet runs alone: add that to the default stages kwokctl wrote
# and restart the components so kwok reads them. Before any node exists: a restarted kwok could not take over the
# node leases of the first one until they expire (200 s).
changed=$("$PYTHON" "$here/kwok_stages.py" "$KWOK_CLUSTER_DIR/kwok.yaml" "$HOSTRUN_LABEL")
if [ -n "$changed" ]; then
  echo "kwok stages now skip pods labelled $HOSTRUN_LABEL: $changed" >&2
  kwokctl stop cluster --name "$NAME" >&2
  kwokctl start cluster --name "$NAME" --timeout 100s --wait 90s >&2
  wait_ready 30 || { echo "cluster $NAME did not come back after the kwok stage change" >&2; exit 1; }
fi

deadline=$(($(date +%s) + 60))
until kc -n default get serviceaccount default >/dev/null 2>&1; do  # created by kube-controller-manager
  [ "$(date +%s)" -lt $deadline ] || { echo "no default ServiceAccount after 60s" >&2; exit 1; }
  sleep 0.5
done
kc create -f "$repo/examples/nodes/" >&2
kc wait --for=condition=Ready node --all --timeout=60s >&2

bad=$(ss -ltnpH 2>/dev/null | awk -v pids="$(cluster_pids | paste -sd '|' -)" '
  pids != "" && $0 ~ ("pid=(" pids "),") && $4 !~ /^127\.0\.0\.1:/ {print $4, $6}')
if [ -n "$bad" ]; then
  echo "cluster components listen outside 127.0.0.1:" >&2; echo "$bad" >&2; exit 1
fi
echo "cluster $NAME up in $(($(date +%s) - start))s; kubectl --kubeconfig $KUBECONFIG_PATH get nodes" >&2
echo "$KUBECONFIG_PATH"
