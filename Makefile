# `make run` starts Gate (with a private redis-server when GATE_REDIS_URL is unset);
# `make test` runs every check CI runs. Both install what they need on first use.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAMAILIO_PKGS := kamailio kamailio-extra-modules kamailio-utils-modules kamailio-json-modules \
	kamailio-tls-modules

.PHONY: run test lint install loadtest bench clean

run: $(STAMP)
	$(BIN)/gate serve

test: $(STAMP)
	$(BIN)/ruff check gate tests loadtest
	$(BIN)/ruff format --check gate tests loadtest
	$(BIN)/mypy
	$(BIN)/python .ci/pip_audit.py
	$(BIN)/pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || { \
	  echo "redis-server is missing: installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || { \
	  echo "no compose client: installing docker-compose to validate docker-compose.yml"; \
	  (apt-get update -qq && apt-get install -y -qq docker-compose) || \
	  echo "docker-compose could not be installed; the compose test will skip"; }
	@dpkg -s $(KAMAILIO_PKGS) >/dev/null 2>&1 || { \
	  echo "Kamailio packages missing: installing them with apt-get (the switch tests use them)"; \
	  (apt-get update -qq && apt-get install -y -qq $(KAMAILIO_PKGS)) || \
	  echo "Kamailio could not be installed; the Kamailio tests will skip"; }
	@test -x /usr/bin/chromium || { \
	  echo "chromium is missing (the billing page's browser tests drive it): installing it"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) || \
	  echo "chromium could not be installed; the browser tests will skip"; }
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,loadtest]'
	touch $(STAMP)

loadtest: $(STAMP)
	$(BIN)/python -m loadtest --duration 60

# Per-operation Gate and Redis CPU, bare handler beside, as ratios (loadtest/bench.py).
bench: $(STAMP)
	$(BIN)/python -m loadtest.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
