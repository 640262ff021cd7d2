# Fresh machine: `make dev` runs the gateway for real, `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned in setup.cfg [dev]; generated files must match byte for byte.
PROTOC := $(BIN)/python -m grpc_tools.protoc

.PHONY: install dev test kafka-jars proto proto-check lint clean bench-report
.PHONY: proto-lint proto-breaking proto-release go-bot-proto go-bot-proto-check

# What running needs (make dev): the runtime package alone, installed with pip's own
# progress, then the broker's jars (Maven's downloads shown the first time only).
$(BIN)/knowlarity-gateway: setup.cfg pyproject.toml
	@echo "== a virtualenv in $(VENV), the gateway and what it needs to run (pip)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e .
	touch $@

# What developing needs (make install, make test): test, lint and codegen tools, and
# the bench tooling, its own project (bench/, import name kgw_bench) so the runtime
# wheel never carries it; the bench extra holds its third-party dependencies.
$(VENV)/.dev-tools: $(BIN)/knowlarity-gateway setup.cfg bench/pyproject.toml
	@echo "== test, lint, codegen and bench tools (pip)"
	$(BIN)/pip install -e '.[dev,codegen,bench]' -e ./bench
	touch $@

kafka-jars: $(BIN)/knowlarity-gateway
	@$(BIN)/python -m gateway.localkafka fetch --verbose

install: $(VENV)/.dev-tools kafka-jars

dev: $(BIN)/knowlarity-gateway kafka-jars
	$(BIN)/knowlarity-gateway dev

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

proto: $(VENV)/.dev-tools
	rm -f gateway/proto/knowlarity/gateway/v1/*_pb2.py*
	$(PROTOC) -Iproto --python_out=gateway/proto --pyi_out=gateway/proto \
		proto/knowlarity/gateway/v1/*.proto

proto-check: proto
	git diff --exit-code -- gateway/proto
	test -z "$$(git status --porcelain -- gateway/proto)"

# buf (lint, breaking-change checks, code generation for other languages), pinned by
# proto/package-lock.json: npm ci installs exactly the locked version into proto/node_modules.
BUF := proto/node_modules/.bin/buf
$(BUF): proto/package.json proto/package-lock.json
	cd proto && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# buf's STANDARD rules; see proto/buf.yaml.
proto-lint: $(BUF)
	cd proto && node_modules/.bin/buf lint

# The schemas must stay compatible on the wire and in JSON with the last released ones.
proto-breaking: $(BUF)
	cd proto && node_modules/.bin/buf breaking --against released/v1.binpb

# Cut a release: at the commit being released (lint and breaking checks green), run
# `make proto-release` and commit proto/released/v1.binpb with it. From then on
# proto-breaking holds every change to that release. The image carries no source info
# (comments, line numbers): only what compatibility depends on.
proto-release: $(BUF)
	cd proto && node_modules/.bin/buf build --exclude-source-info -o released/v1.binpb

# The Go example bot's generated code (examples/go-echo-bot/gen), from proto/ by buf and
# protoc-gen-go at the version the example's go.mod pins (`go tool protoc-gen-go`).
go-bot-proto: $(BUF)
	cd examples/go-echo-bot && ../../$(BUF) generate

go-bot-proto-check: go-bot-proto
	git diff --exit-code -- examples/go-echo-bot/gen
	test -z "$$(git status --porcelain -- examples/go-echo-bot/gen)"

lint: $(VENV)/.dev-tools
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info bench/build bench/*.egg-info

# Regenerates bench/RESULTS.md, bench/results.png and bench/results.json
# (about 30 minutes on a 2-core machine).
bench-report: install
	$(BIN)/python -m kgw_bench.report --out bench
