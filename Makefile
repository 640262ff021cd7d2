# Fresh machine: `make dev` runs the gateway for real, `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned in setup.cfg [dev]; generated files must match byte for byte.
PROTOC := $(BIN)/python -m grpc_tools.protoc

.PHONY: install dev test proto proto-check lint clean bench-report

# The runtime package, and beside it the bench tooling: its own project (bench/,
# import name kgw_bench) so the runtime wheel never carries it; the bench extra
# holds its third-party dependencies.
$(BIN)/knowlarity-gateway: setup.cfg pyproject.toml bench/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]' -e ./bench
	touch $@

install: $(BIN)/knowlarity-gateway
	$(BIN)/python -m gateway.localkafka fetch

dev: install
	$(BIN)/knowlarity-gateway dev

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

proto: $(BIN)/knowlarity-gateway
	rm -f gateway/proto/knowlarity/gateway/v1/*_pb2.py*
	$(PROTOC) -Iproto --python_out=gateway/proto --pyi_out=gateway/proto \
		proto/knowlarity/gateway/v1/*.proto

proto-check: proto
	git diff --exit-code -- gateway/proto
	test -z "$$(git status --porcelain -- gateway/proto)"

lint: $(BIN)/knowlarity-gateway
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info bench/build bench/*.egg-info

# Regenerates bench/RESULTS.md, bench/results.png and bench/results.json
# (about 30 minutes on a 2-core machine).
bench-report: install
	$(BIN)/python -m kgw_bench.report --out bench
