#!/usr/bin/env bash
# make demo: a local control plane with simulated GPU nodes, the CRDs, the operator, the examples, the placement,
# and the gateway in front of the example SLMRoute (answered by stand-ins of the replica pods: no model server runs).
# Leaves everything running; `make demo-down` stops it. First run builds the control plane from Go modules.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
NAME=${SLM_DEMO_CLUSTER:-slm-demo}
VENV=${VENV:-.venv}
export SLM_CLUSTER_DIR=${SLM_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/clusters/$NAME}
BIN=$(e2e/cluster/bin-dir.sh)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/7 control-plane binaries (first build: about 15 minutes on 2 cores; cached in $BIN)"
e2e/cluster/build.sh

step "2/7 local cluster '$NAME' (etcd, kube-apiserver, controller-manager, scheduler, kwok; all on 127.0.0.1)"
KUBECONFIG=$(e2e/cluster/up.sh "$NAME" | tail -n 1)
export KUBECONFIG
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
kc get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.count

step "3/7 CRDs, PriorityClasses, namespaces, volumes"
kc apply -f crds/
kc wait --for=condition=Established crd --all --timeout=60s >/dev/null
kc apply -f deploy/priorityclasses.yaml -f e2e/cluster/volumes.yaml
for ns in gpu-operator slm-system; do kc get ns "$ns" >/dev/null 2>&1 || kc create ns "$ns"; done

step "4/7 NVIDIA stack simulator, host kubelet and slm-operator (logs in $SLM_CLUSTER_DIR)"
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
# The simulator reads the mig-parted ConfigMap at once (real kubelets refresh a mounted ConfigMap within ~90 s,
# which --configmap-sync-seconds waits for by default), so the demo's operator waits 5 s, as the e2e suite's does.
start operator "$VENV/bin/slm-operator" run --kubeconfig "$KUBECONFIG" --namespace slm-system --leader-elect \
  --configmap-sync-seconds 5

step "5/7 kubectl apply -f examples/"
kc apply -f examples/
echo "waiting for every SLMDeployment to be Ready (up to 3 minutes)..."
deadline=$(($(date +%s) + 180))
while :; do
  notready=$(kc get slmdeployments -A -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -cv '=True$' || true)
  [ "$notready" = 0 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "still $notready not Ready; see $SLM_CLUSTER_DIR/operator.log"; break; }
  sleep 2
done

step "6/7 what slm-operator did"
kc get slm -A -o wide
echo
"$VENV/bin/slm-operator" show --kubeconfig "$KUBECONFIG"

# The gateway in in-cluster mode, as in the chart: it watches SLMRoutes, SLMDeployments and EndpointSlices. No
# model server runs here, so e2e/replicas.py serves an OpenAI-compatible stand-in for each Running replica pod on
# a loopback twin of the pod's kwok IP (the API refuses loopback addresses in EndpointSlices) and the gateway
# dials the pods there (--dial-map, docs/e2e.md).
GATEWAY_PORT=${SLM_DEMO_GATEWAY_PORT:-18080}
LOOPBACK=${SLM_DEMO_LOOPBACK:-127.77.0.0/24}
step "7/7 the gateway on http://127.0.0.1:$GATEWAY_PORT/v1 in front of SLMRoute agents/agent-llm"
PYTHONPATH=$repo start replicas "$VENV/bin/python" -m e2e.replicas --kubeconfig "$KUBECONFIG" --loopback "$LOOPBACK"
start gateway "$VENV/bin/slm-operator" gateway --kubeconfig "$KUBECONFIG" --listen "127.0.0.1:$GATEWAY_PORT" \
  --dial-map "10.0.0.0/24=$LOOPBACK" --store "sqlite:///$SLM_CLUSTER_DIR/usage.db" \
  --spool-dir "$SLM_CLUSTER_DIR/gateway-spool" --salt-file "$SLM_CLUSTER_DIR/gateway-salt"
CURL="curl -s http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions -H 'Authorization: Bearer sk-demo-agents-0000' \\
  -H 'x-slm-task: extract-invoice' -H 'Content-Type: application/json' \\
  -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Total of invoice 4711?\"}]}'"
# MIG slices take a while on a fresh cluster (the operator waits for mig-manager's mounted ConfigMap, ~90 s)
echo "waiting for the gateway and for a Running replica of agents/invoice-extractor (up to 4 minutes)..."
deadline=$(($(date +%s) + 240))
until answer=$(bash -c "$CURL -f -D '$SLM_CLUSTER_DIR/gateway-headers'" 2>/dev/null); do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "no answer; see $SLM_CLUSTER_DIR/gateway.log and replicas.log"; break; }
  sleep 2
done
kc get slmroutes -A
echo
echo "One call through the gateway (the example key sk-demo-agents-0000 of examples/40-slmroutes.yaml):"
echo "  $CURL"
echo "answered by: $(grep -i '^x-slm-backend' "$SLM_CLUSTER_DIR/gateway-headers" 2>/dev/null | tr -d '\r')"
echo "answer: ${answer:-none}"
[ -z "$answer" ] || echo "its text: $(printf %s "$answer" | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')"
cat <<TXT
Look around:
  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$BIN/kubectl
  kubectl get slm -A -o wide                      # the resources (category 'slm')
  kubectl describe slmdeployment -n agents invoice-extractor
  kubectl get nodes -L nvidia.com/mig.config -L nvidia.com/mig.config.state -L nvidia.com/device-plugin.config
  kubectl -n gpu-operator get configmap slm-mig-parted-config -o yaml
  kubectl scale -n agents slmdeployment/intent-router --replicas=6 && $VENV/bin/slm-operator show
  tail -f $SLM_CLUSTER_DIR/operator.log
  $CURL
  $VENV/bin/slm-operator usage export --store sqlite:///$SLM_CLUSTER_DIR/usage.db   # what the gateway captured
Tear down:  make demo-down
TXT
