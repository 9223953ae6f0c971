# Sourced by up.sh / down.sh / status.sh: paths of one named local cluster. Expects NAME and here.
BIN=$("$here/bin-dir.sh")
CLUSTER_DIR=${SLM_CLUSTER_DIR:-$HOME/.cache/slm-operator/clusters/$NAME}
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
# kwok leaves pods with this label to the e2e host kubelet (e2e/hostkubelet), which runs their containers as host
# processes; the e2e suite sets it to the FineTuneJob pod label (slm_operator.contract.FINETUNE_JOB_LABEL)
HOSTRUN_LABEL=${SLM_HOSTRUN_LABEL:-slm.io/finetunejob}
# kwok acts as the kubelet of the nodes with this label (every node of examples/nodes/ has it)
KWOK_NODE_LABEL=${SLM_KWOK_NODE_LABEL:-type=kwok}
# Python with PyYAML for kwok_stages.py: the repository's virtualenv when there is one
PYTHON=${PYTHON:-$( [ -x "$here/../../.venv/bin/python" ] && echo "$here/../../.venv/bin/python" || echo python3)}
# kwokctl keeps its per-cluster files (PKI, pid files, logs, kwok.yaml) under $KWOK_WORKDIR/clusters/<name>
export KWOK_WORKDIR="$CLUSTER_DIR/kwok"
KWOK_CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
export PATH="$BIN:$PATH"
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
cluster_ready() { [ -s "$KUBECONFIG_PATH" ] && kc get --raw /readyz >/dev/null 2>&1; }
container_pids() {  # process groups of the host kubelet's containers still running (e2e/hostkubelet/runtime.py)
  local f p t
  for f in "$CLUSTER_DIR"/hostkubelet/pods/*/*/pid; do
    [ -f "$f" ] || continue
    read -r p t <"$f" || continue
    # the start time (field 22 of /proc/PID/stat) tells the container's process from a reused pid
    [ -r "/proc/$p/stat" ] && [ "$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $20}')" = "$t" ] && echo "$p"
  done
  return 0
}
cluster_pids() {  # pids of the cluster's processes (from kwokctl's pid files), one per line
  local f
  for f in "$KWOK_CLUSTER_DIR"/pids/*.pid; do
    [ -f "$f" ] || continue
    local p; p=$(tr -dc 0-9 <"$f")
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"
  done
  return 0
}
