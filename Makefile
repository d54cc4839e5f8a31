# Quick start:  make run   (the gateway on :8767)   |   make test   (the whole suite)
# The interpreter: python3.11 when there is one, else python3 when it is 3.11 or later;
# choose another with  make run PYTHON=/path/to/python3.12
PYTHON ?= $(shell command -v python3.11 2>/dev/null || { python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && command -v python3; })
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run lint test test-tools test-fast demo clean bench bench-peers bench-profile bench-floor bench-tools bench-limiter bench-stream-instructions fuzz soak

$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "make: no Python 3.11 or later found (python3.11, python3); use make PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: $(PYTHON) is older than 3.11; use make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || { echo "make: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing the dependencies into $(VENV) (requirements-dev.txt; the first time takes a minute or two)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)
	@echo "make: $(VENV) is ready"

## Start the gateway under gunicorn with the shipped gunicorn.conf.py.
run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## Style and types: ruff's rules (ruff.toml), ruff's formatter (fix with  .venv/bin/ruff format <files>),
## mypy strict on gateway/ (mypy.ini). CI runs this before the tests.
LINT_PATHS := gateway tests bench wsgi.py gunicorn.conf.py
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy gateway wsgi.py

## Run every test: unit, integration (fake upstream on loopback), end-to-end (real gunicorn).
test: $(STAMP) test-tools
	$(BIN)/python -m pytest

## What the end-to-end tests need beside Python: libfaketime (a budget's reset at midnight,
## tests/e2e/test_e2e_budget_reset.py), from Debian's faketime package; a headless browser for the
## console's tests (tests/e2e/test_e2e_console.py), Debian's chromium and chromium-driver; promtool for the
## alert rules' tests (tests/unit/test_alert_rules.py), taken from Debian's prometheus package (the binary only).
test-tools: $(STAMP)
	@test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 -o -e /usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing faketime (apt-get)"; apt-get install -y -qq faketime >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq faketime >/dev/null; }; \
	  else echo "libfaketime is missing: sudo apt-get update && sudo apt-get install -y faketime"; exit 1; fi; }
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get)"; apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
	  else echo "chromium is missing: sudo apt-get update && sudo apt-get install -y chromium chromium-driver"; exit 1; fi; }
	@command -v promtool >/dev/null 2>&1 || test -x $(BIN)/promtool || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "promtool is missing: install Debian's prometheus package, or put promtool on PATH"; exit 1; }; \
	  echo "fetching promtool from Debian's prometheus package into $(BIN) (the binary only: no server installed)"; \
	  tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp" && \
	  { apt-get download -qq prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download -qq prometheus >/dev/null 2>&1; }; } && \
	  dpkg-deb -x prometheus_*.deb root && install -m 755 root/usr/bin/promtool "$(CURDIR)/$(BIN)/promtool"; }

## The development loop: unit and integration tests that need neither PostgreSQL nor Redis nor real
## gunicorn, less the slow ones (fresh interpreters, seconds of real time). make test runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not postgres and not redis and not e2e and not docker and not slow"

## Schemathesis from GET /openapi.json against the live gateway (real gunicorn, fake upstream), longer
## than the bounded run in make test: FUZZ_SECONDS for the master-key run (a managed key and a wrong key
## get half and a quarter), FUZZ_MAX_EXAMPLES per operation; FUZZ_SEED=<seed> replays a run.
FUZZ_SECONDS ?= 400
FUZZ_MAX_EXAMPLES ?= 100
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) \
	  $(BIN)/python -m pytest -m fuzz tests/e2e/test_fuzz.py -rxs

## Soak: SOAK_SECONDS (default 1200) of mixed traffic to 127.0.0.1 (streams, drops, admin calls), each
## worker's RSS and open descriptors sampled; fails on growth past the bounds; writes docs/soak.md.
SOAK_SECONDS ?= 1200
soak: $(STAMP)
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS) --out docs/soak.md

## The gateway in front of the project's own fake OpenAI-compatible upstream (no LLM needed).
## MASTER_API_KEY is the original README's example value, public: so development mode,
## loopback only, its own instance folder (not make run's keys and usage), no .env read.
DEMO_PORT          ?= 8767
DEMO_UPSTREAM_PORT ?= 8768
DEMO_INSTANCE      ?= $(CURDIR)/instance/demo
demo: $(STAMP)
	@echo "make demo: gateway on http://127.0.0.1:$(DEMO_PORT) (key your-master-key, this host only), fake upstream on 127.0.0.1:$(DEMO_UPSTREAM_PORT); Ctrl-C stops both"
	@$(BIN)/python -m tests.fakes.upstream --host 127.0.0.1 --port $(DEMO_UPSTREAM_PORT) --gap 0.2 & upstream=$$!; \
	trap 'kill $$upstream 2>/dev/null; wait $$upstream 2>/dev/null' EXIT; trap 'exit 0' INT TERM; \
	NODE_ENV=development AI_PROXY_ENV_FILE=/nonexistent AI_PROXY_HOST=127.0.0.1 AI_PROXY_PORT=$(DEMO_PORT) \
	INSTANCE_PATH="$(DEMO_INSTANCE)" AI_API_URL=http://127.0.0.1:$(DEMO_UPSTREAM_PORT)/v1/completions \
	MASTER_API_KEY=your-master-key $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## Benchmark: the bench upstream direct vs through the gateway: one backend, two backends (gateway-2b: routing), Redis quotas, then
## paced LLM-shaped streams at rising concurrency and the 1000-stream hold (bench/paced.py) (~25 min); writes
## bench/results/latest.json, docs/benchmarks.md and docs/benchmarks*.png. See bench/run.py.
## Extra options for bench/run.py go in BENCH_ARGS, e.g. make bench BENCH_ARGS="--duration 15".
BENCH_VENV  := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_RUN   := ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; $(BENCH_VENV)/bin/python -m bench.run

$(BENCH_STAMP): bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $(BENCH_STAMP)

## wrk comes from Debian; installed here when running as root, otherwise explained.
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk (apt-get)"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing: sudo apt-get update && sudo apt-get install -y wrk"; exit 1; fi; }
	@command -v taskset >/dev/null 2>&1 || { echo "taskset is missing (Debian package util-linux)"; exit 1; }

bench: $(STAMP) $(BENCH_STAMP) bench-tools
	$(BENCH_RUN) $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python -m bench.report

## The same load against LiteLLM's proxy and Portkey's gateway, one run side by side, and the paced streams
## of direct, the gateway, Portkey and LiteLLM interleaved in one run (~17-20 min; installs both peers into the
## git-ignored bench/.peers/ first); writes bench/results/peers.json.
bench-peers: $(STAMP) $(BENCH_STAMP) bench-tools
	bash bench/peers/install.sh
	$(BENCH_RUN) --targets direct,gateway,gateway-redis,litellm,portkey --repeats 1 --slow-rounds 1 \
	  --out bench/results/peers.json $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python -m bench.report

## CPU per request of the bare serving stack (gunicorn+gevent, Flask, requests vs urllib3).
bench-floor: $(STAMP) $(BENCH_STAMP) bench-tools
	$(BENCH_VENV)/bin/python -m bench.floor

## CPU per request of the quotas: limiter off, memory://, Redis; writes bench/results/limiter.json.
bench-limiter: $(STAMP)
	$(BIN)/python -m bench.limiter_cost

## Instructions per relayed stream event (callgrind, the real gunicorn worker) for the gateway and the floor (a bare
## Flask relay of the same stream); writes bench/results/stream_instructions.json (see bench/stream_instructions.py).
bench-stream-instructions: $(STAMP) $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.stream_instructions $(BENCH_ARGS)

## py-spy on the gateway worker under 16-connection load; writes bench/results/profile.md.
bench-profile: $(STAMP) $(BENCH_STAMP) bench-tools
	$(BENCH_VENV)/bin/python -m bench.profile

clean:
	rm -rf $(VENV) $(BENCH_VENV)
