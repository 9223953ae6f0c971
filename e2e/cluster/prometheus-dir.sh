#!/usr/bin/env bash
# Prints the versioned cache folder (outside the repository) that holds prometheus and promtool.
PROM=${PROMETHEUS_VERSION:-v0.316.0}
echo "${SLM_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator/k8s-bin}/prometheus-${PROM}"
