#!/usr/bin/env bash
# Builds prometheus and promtool (pinned) from the Go module proxy for the observability e2e
# (e2e/test_observability.py): Prometheus scrapes the operator there, loads the shipped alert
# rules, and evaluates every Grafana dashboard query. Built with `remove_all_sd` (only static
# scrape configs: no cloud SDKs to compile) and without the `builtinassets` tag (no web UI: the
# test only uses the HTTP API). Binaries land in a versioned cache folder outside the repository,
# printed by prometheus-dir.sh; a second run with the binaries present does nothing.
set -euo pipefail
PROM=${PROMETHEUS_VERSION:-v0.316.0}   # Go module version of Prometheus 3.16.0
here=$(cd "$(dirname "$0")" && pwd)
BIN=$("$here/prometheus-dir.sh")
if [ -x "$BIN/prometheus" ] && [ -x "$BIN/promtool" ]; then echo "prometheus present in $BIN"; exit 0; fi
echo "building prometheus and promtool $PROM into $BIN"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
mkdir -p "$BIN"
M=${PROM#v0.}; M=${M%%.*}; VER=3.$((M - 300)).${PROM##*.}   # v0.316.0 -> 3.16.0
V=github.com/prometheus/common/version
GOBIN="$BIN" go install -trimpath -tags remove_all_sd \
  -ldflags "-s -w -X $V.Version=$VER -X $V.Branch=module -X $V.Revision=$PROM" \
  "github.com/prometheus/prometheus/cmd/prometheus@$PROM" "github.com/prometheus/prometheus/cmd/promtool@$PROM"
echo "prometheus ready in $BIN"
