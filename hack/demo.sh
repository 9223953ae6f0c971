#!/usr/bin/env bash
# make demo: a local control plane with simulated GPU nodes, the CRDs, the operator, the examples, the placement.
# Leaves everything running; `make demo-down` stops it. First run builds the control plane from Go modules.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
NAME=${SLM_DEMO_CLUSTER:-slm-demo}
VENV=${VENV:-.venv}
export SLM_CLUSTER_DIR=${SLM_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/clusters/$NAME}
BIN=$(e2e/cluster/bin-dir.sh)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 control-plane binaries (first build: about 15 minutes on 2 cores; cached in $BIN)"
e2e/cluster/build.sh

step "2/6 local cluster '$NAME' (etcd, kube-apiserver, controller-manager, scheduler, kwok; all on 127.0.0.1)"
KUBECONFIG=$(e2e/cluster/up.sh "$NAME" | tail -n 1)
export KUBECONFIG
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
kc get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.count

step "3/6 CRDs, PriorityClasses, namespaces, volumes"
kc apply -f crds/
kc wait --for=condition=Established crd --all --timeout=60s >/dev/null
kc apply -f deploy/priorityclasses.yaml -f e2e/cluster/volumes.yaml
for ns in gpu-operator slm-system; do kc get ns "$ns" >/dev/null 2>&1 || kc create ns "$ns"; done

step "4/6 NVIDIA stack simulator, host kubelet and slm-operator (logs in $SLM_CLUSTER_DIR)"
start() {  # name, command...
  local name=$1; shift
  local pidf="$SLM_CLUSTER_DIR/$name.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then echo "$name already running"; return; fi
  nohup "$@" >"$SLM_CLUSTER_DIR/$name.log" 2>&1 &
  echo $! >"$pidf"
  echo "$name started (pid $!)"
}
PYTHONPATH=$repo start nvsim "$VENV/bin/python" -m e2e.nvsim --kubeconfig "$KUBECONFIG" --namespace gpu-operator
# runs the FineTuneJob pods' containers as host processes (kwok runs none); docs/e2e.md section 5
PYTHONPATH=$repo start hostkubelet "$VENV/bin/python" -m e2e.hostkubelet --kubeconfig "$KUBECONFIG" \
  --label "${SLM_HOSTRUN_LABEL:-slm.io/finetunejob}"
start operator "$VENV/bin/slm-operator" run --kubeconfig "$KUBECONFIG" --namespace slm-system --leader-elect

step "5/6 kubectl apply -f examples/"
kc apply -f examples/
echo "waiting for every SLMDeployment to be Ready (up to 3 minutes)..."
deadline=$(($(date +%s) + 180))
while :; do
  notready=$(kc get slmdeployments -A -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -cv '=True$' || true)
  [ "$notready" = 0 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "still $notready not Ready; see $SLM_CLUSTER_DIR/operator.log"; break; }
  sleep 2
done

step "6/6 what slm-operator did"
kc get slm -A -o wide
echo
"$VENV/bin/slm-operator" show --kubeconfig "$KUBECONFIG"
cat <<TXT
Look around:
  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$BIN/kubectl
  kubectl get slm -A -o wide                      # the three resources (category 'slm')
  kubectl describe slmdeployment -n agents invoice-extractor
  kubectl get nodes -L nvidia.com/mig.config -L nvidia.com/mig.config.state -L nvidia.com/device-plugin.config
  kubectl -n gpu-operator get configmap slm-mig-parted-config -o yaml
  kubectl scale -n agents slmdeployment/intent-router --replicas=6 && $VENV/bin/slm-operator show
  tail -f $SLM_CLUSTER_DIR/operator.log
Tear down:  make demo-down
TXT
