#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by the end-to-end tests and `make demo`:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes built
# as a dependency of a generated wrapper module whose staging modules are replaced by their
# published versions), etcd (own wrapper module), kwok/kwokctl and helm (plain `go install`).
# Everything comes from the Go module proxy. Binaries land in a versioned cache folder outside
# the repository; a second run with the binaries present does nothing.
set -euo pipefail
K8S=${K8S_VERSION:-v1.36.3}; ETCD=${ETCD_VERSION:-v3.6.10}; KWOK=${KWOK_VERSION:-v0.8.0}; HELM=${HELM_VERSION:-v3.21.4}
here=$(cd "$(dirname "$0")" && pwd)
BIN=$("$here/bin-dir.sh")
want=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm)
missing=()
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "control-plane binaries present in $BIN"; exit 0; fi
echo "building ${missing[*]} into $BIN (first build takes 10-25 minutes on 2 cores)"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
MINOR=${K8S#v1.}; MINOR=${MINOR%%.*}; STG=v0.${K8S#v1.}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; mkdir -p "$BIN"
need() { for m in "$@"; do [[ " ${missing[*]} " == *" $m "* ]] && return 0; done; return 1; }

if need kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  mkdir "$W/k8s"; cd "$W/k8s"; go mod init local/k8sbin >/dev/null 2>&1
  KGOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  go mod edit -go="$(awk '/^go /{print $2; exit}' "$KGOMOD")"
  for d in $(awk '/^godebug /{print $2}' "$KGOMOD"); do go mod edit -godebug="$d"; done
  for m in $(sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/.*#\1#p' "$KGOMOD"); do
    go mod edit -replace="$m=$m@$STG"
  done
  go mod edit -require="k8s.io/kubernetes@$K8S"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do go mod edit -tool="k8s.io/kubernetes/cmd/$c"; done
  go mod tidy
  V=k8s.io/component-base/version; CV=k8s.io/client-go/pkg/version; BD=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LDF="-s -w"; for p in $V $CV; do LDF="$LDF -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean -X $p.buildDate=$BD"; done
  go build -trimpath -ldflags "$LDF" -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
fi
if need etcd; then
  mkdir "$W/etcd"; cd "$W/etcd"; go mod init local/etcdbin >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD" -tool=go.etcd.io/etcd/server/v3
  go mod tidy && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
fi
if need kwok kwokctl; then
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK"
fi
if need helm; then
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM" "helm.sh/helm/v3/cmd/helm@$HELM"
fi
echo "control-plane binaries ready in $BIN"
