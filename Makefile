# Wattkeeper: `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export WATTKEEPER_CACHE ?= $(HOME)/.cache/wattkeeper
export KUBECONFIG := $(CURDIR)/.local/kubeconfig
PYTEST_ARGS ?=

.PHONY: help deps venv tools debs crds test test-unit test-integration test-e2e lint cluster-up cluster-down \
        sim-cluster-up run demo bench bench-scale images clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## Python environment with the project and its dev tools

tools: ## build etcd, Kubernetes, KWOK, Helm, prometheus-operator and Prometheus from the Go module proxy (cached in $WATTKEEPER_CACHE)
	hack/build-tools.sh

debs: ## Debian packages: prometheus, lua5.4, openssl, mmdebstrap, umoci
	hack/install-debs.sh

deps: venv tools debs ## everything above

crds: venv ## regenerate crds/ and the chart's copy from the typed API
	$(BIN)/wattkeeper crds

lint: venv ## ruff, mypy and the import layering contracts
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: deps ## the whole suite: lint, unit, control plane, end-to-end
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest --integration --e2e $(PYTEST_ARGS) tests

test-unit: venv ## the fast, pure tier
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests/unit

test-integration: deps ## unit + the real control plane tier
	$(BIN)/python -m pytest --integration $(PYTEST_ARGS) tests/unit tests/integration

cluster-up: tools ## start etcd, kube-apiserver, kube-controller-manager on loopback; kubeconfig in .local/
	$(PYTHON) hack/localcluster.py up

sim-cluster-up: tools ## cluster-up plus kube-scheduler, KWOK and fake H100 nodes
	$(PYTHON) hack/localcluster.py up --sim

cluster-down: ## stop the local cluster and remove its state
	$(PYTHON) hack/localcluster.py down

run: venv ## run the operator against the current kubeconfig
	$(BIN)/wattkeeper run

demo: deps ## the whole story on a simulated GPU cluster: load rises, the budget tightens, the operator adapts
	$(BIN)/python hack/demo.py

bench: venv ## trace-driven energy benchmark against the baselines; planner timing
	$(BIN)/wattkeeper bench standard --out out/bench

bench-scale: deps ## 1,000 LLMServices against the real apiserver: convergence, budget change, idle writes, RSS
	$(BIN)/python hack/bench_scale.py --services 1000 --budgeted 100 --out out/bench-scale

images: venv debs ## operator and runtime images without Docker (mmdebstrap + chroot, OCI layout in out/images/oci)
	$(BIN)/python images/build.py --check

clean: cluster-down
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
