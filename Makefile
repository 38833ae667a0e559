# The README names two commands: `make run` and `make test`. Everything else here
# is what those two need, installed once and reused (stamps keep reruns cheap).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := .cache
CP_BIN := $(CACHE)/bin
PYTEST_ARGS ?=

.PHONY: run test lint check-format format typecheck contracts unit deps apt-deps native interpreted controlplane helm bench devcluster kind-e2e clean

run: deps
	$(BIN)/limpet demo

# LIMPET_NATIVE=required: tests/proxy/process/test_native.py fails unless the proxy's hot
# path runs compiled (so the mypyc build cannot silently drop out of the tested set-up).
test: deps lint
	LIMPET_NATIVE=required bash tools/run-pytest.sh $(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(VENV)/.stamp
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

deps: apt-deps $(VENV)/.stamp native controlplane helm

apt-deps:
	bash tools/apt-deps.sh

# The proxy's hot path compiled with mypyc beside its sources (limpet.proxy.process.native
# lists the modules); rebuilt only when a source, mypy or the C compiler changes.
native: $(VENV)/.stamp
	$(BIN)/python tools/native/build.py --require

# Remove that build: the proxy then runs interpreted (`make native` restores it).
interpreted: $(VENV)/.stamp
	$(BIN)/python tools/native/build.py --clean

controlplane:
	OUT=$(CP_BIN) bash tools/controlplane/build.sh

# helm and helm3, built from helm.sh/helm/v4 and v3 (tools/helm/go.mod) next to kubectl, and
# the Prometheus Operator's CRDs (pinned upstream YAML through the Go module proxy): the
# chart tests use them.
helm:
	OUT=$(CP_BIN) bash tools/helm/build.sh
	OUT=$(CACHE)/prometheus-operator-crds bash tools/helm/prometheus-operator-crds.sh

# The runtime dependencies' whole closure at the image lock's versions (its pins, without
# the hashes, as constraints): a release upstream of an unpinned transitive dependency
# must not move a fresh venv away from what the image installs and the tests check.
# To change a dependency: install it into the venv by hand, then run deploy/image/lock.py.
$(VENV)/.stamp: pyproject.toml deploy/image/requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*==[^ ]*\).*/\1/p' deploy/image/requirements.lock \
	  > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[dev]'
	touch $@

devcluster: deps
	$(BIN)/limpet devcluster --kubeconfig $(CACHE)/kubeconfig

bench: deps
	$(BIN)/python -m bench

# Needs Docker and kind (not available on the development machine): see tools/kind-e2e.sh.
kind-e2e:
	bash tools/kind-e2e.sh

clean:
	rm -rf $(VENV) $(CACHE) .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find operator -name '*.so' -delete
	rm -f operator/limpet/proxy/process/native_build.json
