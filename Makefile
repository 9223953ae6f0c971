# slm-operator: every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

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

##@ Development
.PHONY: fmt
fmt: $(STAMP) ## Format the code (ruff format + ruff check --fix)
	$(BIN)/ruff format operator tests e2e bench
	$(BIN)/ruff check --fix operator tests e2e bench

.PHONY: lint
lint: $(STAMP) ## ruff on everything, mypy --strict on the pure core
	$(BIN)/ruff check operator tests e2e bench
	$(BIN)/ruff format --check operator tests e2e bench
	$(BIN)/mypy --strict operator/slm_operator/api operator/slm_operator/catalog operator/slm_operator/sizing.py \
	  operator/slm_operator/planner

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ and docs/api.md from the pydantic models
	$(BIN)/slm-operator crds --output-dir crds
	$(BIN)/python -m slm_operator.api.apidoc > docs/api.md

.PHONY: verify
verify: crds ## Regenerate everything generated and fail on any difference from what is committed
	@git diff --exit-code -- crds docs/api.md || \
	  { echo "generated files are out of date: run 'make crds' and commit the result"; exit 1; }
	@test -z "$$(git status --porcelain -- crds docs/api.md)" || \
	  { echo "untracked generated files: run 'make crds' and commit the result"; exit 1; }

##@ Tests
.PHONY: test
test: test-unit ## Run every test tier (unit, property and end-to-end)

.PHONY: test-unit
test-unit: $(STAMP) ## Unit and property tests (no cluster)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) tests

##@ Demo
.PHONY: demo
demo: $(STAMP) ## Show what slm-operator does (see README)
	@bash hack/demo.sh
