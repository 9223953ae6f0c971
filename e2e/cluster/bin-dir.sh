#!/usr/bin/env bash
# Prints the versioned cache folder (outside the repository) that holds the control-plane binaries.
K8S=${K8S_VERSION:-v1.36.3}; ETCD=${ETCD_VERSION:-v3.6.10}; KWOK=${KWOK_VERSION:-v0.8.0}; HELM=${HELM_VERSION:-v3.21.4}
echo "${SLM_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/k8s-bin}/k8s-${K8S}_etcd-${ETCD}_kwok-${KWOK}_helm-${HELM}"
