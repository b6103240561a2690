# One command each: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo rollout-demo pipeline-demo test lint bench protos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: install
	$(BIN)/tfprod demo

rollout-demo: install  # digits v2 rolled out 1% -> 100% and promoted, then a broken v3 rolled back on its own
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python examples/rollout/demo.py --workdir rollout-demo

pipeline-demo: install  # the credit pipeline: push v1, stop a drifted span, bless and push v2 to a running server
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python examples/credit/demo.py --workdir credit-demo

test: install  # browser tests: Debian's Chromium (Playwright's download needs the internet); Node: parity's fallback and the ServiceMonitor schema (npm); PostgreSQL: the store tests start their own server
	(command -v chromium && command -v node && command -v npm && ls /usr/lib/postgresql/*/bin/initdb) >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq chromium nodejs postgresql && (command -v npm || apt-get install -y -qq npm)) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq chromium nodejs postgresql && (command -v npm || sudo apt-get install -y -qq npm))
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check tfprod tests
	$(BIN)/mypy tfprod

bench: install  # the comparison of bench/run.py; BENCH_ARGS=--no-peer skips MLServer and Ray Serve
	(command -v wrk && command -v h2load) >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk nghttp2-client) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq wrk nghttp2-client)
	$(BIN)/pip install -q -e ".[bench]"
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python bench/run.py $(BENCH_ARGS)

protos: install  # regenerate tfprod/protos from grpc_predict_v2.proto (the generated code is checked in)
	PYTHON=$(BIN)/python tfprod/protos/generate.sh

clean:
	rm -rf $(VENV) models build *.egg-info
