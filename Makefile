# slm-operator: every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
PY_PATHS := operator tests tests_gpu tests_contracts tests_train e2e bench hack
# vLLM (for its argument parser) gets its own virtualenv: its pins must not constrain the operator's.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# The trainer's heavy dependencies (torch, transformers, peft) get their own virtualenv too: the operator's .venv
# stays small, and `slm-operator train` there says to install the [train] extra.
TRAIN_VENV ?= .venv-train
TRAIN_STAMP := $(TRAIN_VENV)/.installed

##@ General
.PHONY: help
help: ## List every target with its purpose
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with its dev extras

# Only the [vllm] extra's requirements (the pin lives in pyproject.toml), not the operator itself.
$(VLLM_STAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["vllm"]))')
	touch $(VLLM_STAMP)

.PHONY: vllm-venv
vllm-venv: $(VLLM_STAMP) ## Create .venv-vllm with the pinned vLLM for the contract tests (~9.5 GB, 4-9 min cold)

# The project with the trainer's and the sanitiser's extras, as the trainer image installs it (Dockerfile.trainer).
$(TRAIN_STAMP): pyproject.toml
	$(PY) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --upgrade pip
	$(TRAIN_VENV)/bin/pip install --quiet -e '.[train,sanitize,dev]'
	touch $(TRAIN_STAMP)

.PHONY: train-venv
train-venv: $(TRAIN_STAMP) ## Create .venv-train with the trainer's extras (torch, transformers, peft; ~6 GB)

##@ Development
.PHONY: fmt
fmt: $(STAMP) ## Format the code (ruff format + ruff check --fix)
	$(BIN)/ruff format $(PY_PATHS)
	$(BIN)/ruff check --fix $(PY_PATHS)

.PHONY: lint
lint: $(STAMP) ## ruff on everything, the import contracts (pyproject.toml), mypy --strict on the package
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy --strict operator/slm_operator

.PHONY: lint-chart
lint-chart: $(STAMP) ## kube-linter on the chart where it is on PATH, else its 30 default checks (tests/test_chart_lint.py)
	@if command -v kube-linter >/dev/null 2>&1; then \
	  kube-linter lint charts/slm-operator; \
	else \
	  echo "kube-linter is not on PATH: running its default checks from tests/test_chart_lint.py (charts/slm-operator/README.md)"; \
	  SLM_REQUIRE_HELM=1 $(BIN)/pytest -q -p no:cacheprovider tests/test_chart_lint.py; \
	fi

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ and docs/api.md from the pydantic models
	$(BIN)/slm-operator crds --output-dir crds
	$(BIN)/python -m slm_operator.api.apidoc > docs/api.md

.PHONY: chart-crds
chart-crds: crds ## Copy crds/ into charts/slm-operator/templates/crds/ (installed, kept, upgraded by Helm)
	$(BIN)/python hack/sync_chart_crds.py

.PHONY: argocd-cm
argocd-cm: $(STAMP) ## Regenerate deploy/argocd/argocd-cm.yaml from the health.lua files
	$(BIN)/python hack/gen_argocd_cm.py

GENERATED := crds docs/api.md charts/slm-operator/templates/crds deploy/argocd/argocd-cm.yaml

.PHONY: verify
verify: crds chart-crds argocd-cm ## Regenerate everything generated and fail on any difference from what is committed
	@git diff --exit-code -- $(GENERATED) || \
	  { echo "generated files are out of date: run 'make crds chart-crds argocd-cm' and commit the result"; exit 1; }
	@test -z "$$(git status --porcelain -- $(GENERATED))" || \
	  { echo "untracked generated files: run 'make crds chart-crds argocd-cm' and commit the result"; exit 1; }

##@ Tests
.PHONY: test
test: k8s-bin test-unit test-contracts test-train test-e2e ## Run every test tier (unit, property, contract, trainer, end-to-end); builds the binaries first

.PHONY: test-unit
test-unit: $(STAMP) ## Unit and property tests (no cluster)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --timeout=300 tests

.PHONY: test-contracts
test-contracts: $(STAMP) $(VLLM_STAMP) ## Rendered vLLM args and NVIDIA configs through vLLM's and NVIDIA's real parsers
	$(BIN)/pytest -q -p no:cacheprovider tests_contracts

.PHONY: test-train
test-train: $(TRAIN_STAMP) ## The trainer on CPU: a tiny model it builds learns a synthetic task (docs/finetuning.md)
	$(TRAIN_VENV)/bin/pytest -q -p no:cacheprovider --timeout=600 tests_train

.PHONY: test-e2e
test-e2e: $(STAMP) k8s-bin ## End-to-end tests on a fresh local control plane (builds it first if needed)
	$(BIN)/python -m pytest -q -m "e2e and not observability" -p no:cacheprovider --timeout=900 e2e

# Not part of `test`: a cold Prometheus build took 7-10 min on the shared 2-core machine (docs/e2e.md), at or past
# what CI's 90 minutes leave after the other tiers.
.PHONY: test-observability
test-observability: $(STAMP) k8s-bin prometheus-bin ## A real Prometheus scrapes the operator and agent, loads the alert rules, runs every dashboard query
	$(BIN)/python -m pytest -q -m observability -p no:cacheprovider --timeout=900 e2e

.PHONY: test-gpu
test-gpu: $(STAMP) $(TRAIN_STAMP) ## The node agent (read-only) and QLoRA training on a real NVIDIA GPU (skip without one; not part of test)
	$(BIN)/python -m pytest -q -m gpu -p no:cacheprovider tests_gpu/test_real_gpu.py
	$(TRAIN_VENV)/bin/python -m pytest -q -m gpu -p no:cacheprovider tests_gpu/test_trainer_gpu.py

##@ Benchmarks
.PHONY: bench
bench: $(STAMP) ## Packing benchmark: GPUs used vs lower bound, exact optimum and baselines (docs/benchmarks.md)
	$(BIN)/python -m bench.packing

.PHONY: bench-gateway
bench-gateway: $(STAMP) ## Gateway vs direct calls and a bare aiohttp proxy: added latency, throughput, capture cost, records kept/s (docs/benchmarks.md)
	$(BIN)/python -m bench.gateway

.PHONY: bench-advise
bench-advise: $(STAMP) ## The advisor on 100,000 calls: wall time, peak memory, ARI, classifier tag time (docs/benchmarks.md)
	$(BIN)/python -m bench.advise

.PHONY: bench-autoscale
bench-autoscale: $(STAMP) k8s-bin ## Autoscaling: GPU-hours of a bursty day vs fixed peak replicas, burst and from-zero times (BENCH_ARGS=--no-cluster: day only)
	$(BIN)/python -m bench.autoscale $(BENCH_ARGS)

.PHONY: bench-e2e
bench-e2e: $(STAMP) k8s-bin ## 200 SLMDeployments on the local control plane: time to Running, memory, API requests
	$(BIN)/python bench/e2e_scale.py

.PHONY: bench-e2e-1000
bench-e2e-1000: $(STAMP) k8s-bin ## issue 15's scale: 1,000 SLMDeployments x 2 replicas on 125 nodes (800 GPUs), and requests at rest
	BENCH_DEPLOYMENTS=1000 BENCH_REPLICAS=2 BENCH_FLEET=25 BENCH_REST_SECONDS=120 \
	  BENCH_OUT=$${BENCH_OUT:-bench/out/e2e-1000.json} $(BIN)/python bench/e2e_scale.py

.PHONY: soak
soak: $(STAMP) k8s-bin ## SOAK_MINUTES (30) of random create/delete/scale on the local control plane: memory, threads, fds, log
	$(BIN)/python bench/soak.py

##@ Local cluster and demo
.PHONY: k8s-bin
k8s-bin: ## Build kube-apiserver, controller-manager, scheduler, kubectl, etcd, kwok, helm from Go modules (cached)
	@bash e2e/cluster/build.sh

.PHONY: prometheus-bin
prometheus-bin: ## Build prometheus and promtool (pinned, no web UI, static scrape configs only) from Go modules (cached)
	@bash e2e/cluster/build-prometheus.sh

.PHONY: cluster-up
cluster-up: k8s-bin ## Start the local control plane with simulated GPU nodes (prints the kubeconfig path)
	@bash e2e/cluster/up.sh slm

.PHONY: cluster-down
cluster-down: ## Stop and remove the local control plane
	@bash e2e/cluster/down.sh slm

.PHONY: demo
demo: $(STAMP) ## Cluster + CRDs + operator + examples/, then show the placement (leaves it running)
	@VENV=$(VENV) bash hack/demo.sh

.PHONY: demo-down
demo-down: ## Stop the demo (operator, simulator, cluster)
	@bash hack/demo-down.sh
