# Sourced by up.sh / down.sh / status.sh: paths of one named local cluster. Expects NAME and here.
BIN=$("$here/bin-dir.sh")
CLUSTER_DIR=${SLM_CLUSTER_DIR:-$HOME/.cache/slm-operator/clusters/$NAME}
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
# kwokctl keeps its per-cluster files (PKI, pid files, logs, kwok.yaml) under $KWOK_WORKDIR/clusters/<name>
export KWOK_WORKDIR="$CLUSTER_DIR/kwok"
KWOK_CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
export PATH="$BIN:$PATH"
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
cluster_ready() { [ -s "$KUBECONFIG_PATH" ] && kc get --raw /readyz >/dev/null 2>&1; }
cluster_pids() {  # pids of the cluster's processes (from kwokctl's pid files), one per line
  local f
  for f in "$KWOK_CLUSTER_DIR"/pids/*.pid; do
    [ -f "$f" ] || continue
    local p; p=$(tr -dc 0-9 <"$f")
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"
  done
  return 0
}
