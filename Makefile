# `make run` starts Gate (with a private redis-server when GATE_REDIS_URL is unset);
# `make test` runs every check CI runs. Both install what they need on first use, from uv.lock
# only: `make run` the runtime, `make test` the runtime, the test tools and the system packages
# the suite drives (Kamailio, Chromium, wrk). `make lock` refreshes the lock on purpose.
VENV ?= .venv
BIN := $(VENV)/bin
TOOLS := .tools
UV_VERSION := 0.13.10
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
# The suite's system packages; --no-install-recommends keeps a container engine (and 300 MB of
# other Recommends) out. Checked by dpkg, installed only when one is missing.
TEST_PKGS := redis-server kamailio kamailio-extra-modules kamailio-utils-modules \
	kamailio-json-modules kamailio-tls-modules kamailio-sqlite-modules chromium wrk
APT_INSTALL := apt-get install -y -qq --no-install-recommends

.PHONY: run test checks lint lock lock-check runtime test-env system-packages loadtest bench \
	dist compose-check clean

run: runtime
	$(BIN)/gate serve

test: test-env checks

# Every check CI runs, in the order that fails fastest; `.ci/run` is `make test`.
checks:
	$(BIN)/ruff check gate tests loadtest .ci docs/hooks
	$(BIN)/ruff format --check gate tests loadtest .ci docs/hooks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo --no-cache  # the import rules: [tool.importlinter] in pyproject.toml
	$(BIN)/python .ci/pip_audit.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # a broken link or anchor fails; not -q
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15  # both cores; a file stays on one
	$(BIN)/python -m loadtest.guard

# uv itself, pinned, in a small venv of its own (no system pip install, no curl | sh).
$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

lock-check: $(UV)
	@$(UV) lock --check -q 2>/dev/null || { \
	  echo "uv.lock does not match pyproject.toml. Run '$(UV) lock' (it re-resolves only what"; \
	  echo "changed; 'make lock' refreshes every pin), then 'make test', and commit pyproject.toml"; \
	  echo "and uv.lock together."; exit 1; }

# Refresh every pin to the newest release the ranges in pyproject.toml allow.
lock: $(UV)
	$(UV) lock --upgrade
	@echo "uv.lock refreshed: run 'make test' and commit uv.lock if it passes."

# The runtime only: no test tools, no browser, no SIP stack. --inexact keeps a test venv's extras.
runtime: lock-check
	@command -v redis-server >/dev/null || { \
	  echo "redis-server is missing: installing it with apt-get"; \
	  apt-get update -qq && $(APT_INSTALL) redis-server; }
	$(UV) sync -q --frozen --inexact

test-env: lock-check system-packages
	$(UV) sync -q --frozen --extra test --extra loadtest --extra docs

system-packages:
	@dpkg -s $(TEST_PKGS) >/dev/null 2>&1 || { \
	  echo "installing the suite's system packages with apt-get: $(TEST_PKGS)"; \
	  apt-get update -qq && $(APT_INSTALL) $(TEST_PKGS); }

install: test-env

loadtest: test-env
	$(BIN)/python -m loadtest --duration 60

# wrk's call starts/s and p99 beside the bare handler (loadtest/wrkpair.py; test-env installs
# wrk), then per-operation Gate and Redis CPU, bare handler beside, as ratios (loadtest/bench.py).
bench: test-env
	$(BIN)/python -m loadtest.wrkpair $(WRK_ARGS)
	$(BIN)/python -m loadtest.bench $(BENCH_ARGS)

# The wheel and sdist `pip install` takes; tests/test_dist.py installs the wheel in a fresh venv.
dist: $(UV)
	rm -rf dist
	$(UV) build -q --out-dir dist
	@ls -l dist

# Opt-in: needs a Docker engine and a registry to pull images from (not on CI's machines).
compose-check:
	bash .ci/compose-check.sh

clean:
	rm -rf $(VENV) $(TOOLS) var build dist *.egg-info
