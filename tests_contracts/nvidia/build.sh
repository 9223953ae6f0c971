#!/usr/bin/env bash
# Builds tests/nvidia/validate (NVIDIA's real mig-parted and device-plugin config parsers, from the Go module
# proxy) into a cache folder outside the repository, keyed by the hash of its sources and go.sum, and prints
# the binary's path. A second run with the binary present only prints the path. First build: ~3 minutes on
# 2 cores (cgo: go-nvml is compiled, never loaded).
set -euo pipefail
here=$(cd "$(dirname "$0")/validate" && pwd)
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16)
dir="${SLM_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator}/nvidia-validate-$key"
if [ ! -x "$dir/nvidia-validate" ]; then
  echo "building nvidia-validate into $dir" >&2
  mkdir -p "$dir"
  (cd "$here" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=1 \
    go build -trimpath -ldflags "-s -w" -o "$dir/nvidia-validate.tmp.$$" .)
  mv "$dir/nvidia-validate.tmp.$$" "$dir/nvidia-validate"
fi
echo "$dir/nvidia-validate"
