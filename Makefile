# The two commands of the README: `make run` (set up, local Triton + service) and `make test`
# (set up, static checks, the whole test suite against a real local Triton).
.PHONY: setup run test check lint typecheck proto proto-check deploy-check api-release unit integration bench \
  examples

PY := .venv/bin/python
BUF := node_modules/.bin/buf

setup:
	scripts/bootstrap

run:
	scripts/run

test: setup check
	$(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

# Benchmarks (bench/): starts its own Triton and server on free ports, writes bench/report/ and
# bench/REPORT.md. The bench extras (psutil, matplotlib, py-spy; FastAPI, uvicorn, aiohttp for the
# FastAPI peer) are installed on first use.
bench: setup
	$(PY) -c 'import matplotlib, psutil, fastapi, uvicorn, uvloop, httptools, aiohttp' \
	  2>/dev/null || \
	  .venv/bin/pip install -q -c requirements/dev.lock -e api/python -e ".[dev,bench]"
	$(PY) -m bench $(BENCH_ARGS)

# The Go and Node caller examples against a running server (scripts/examples; Go from Debian's
# packages, clients/go/build): make examples TARGET=host:port IMAGES=dir
# [EXAMPLE_FLAGS="--ca ca.pem --cert cert.pem --key key.pem"]
TARGET ?= 127.0.0.1:4603
IMAGES ?= ../shared/testdata/images
examples:
	scripts/examples "$(TARGET)" "$(IMAGES)" $(EXAMPLE_FLAGS)

check: lint typecheck proto-check deploy-check

lint:
	.venv/bin/ruff check .

typecheck:
	.venv/bin/mypy

# docker-compose.yml, deploy/k8s (rendered, schema-checked), deploy/prometheus.yml and the
# Grafana dashboard, with the validators installed here (scripts/check-deploy says which ran).
deploy-check:
	scripts/check-deploy

# Regenerates api/python/vision/, clients/node/src/gen and api/vision.binpb from protos/ (commit the result).
proto:
	scripts/gen-protos
	scripts/gen-stubs

# buf lint + format, breaking changes against the last released contract (releases/CURRENT,
# shown to catch a deliberate break), stale generated code (Python, TypeScript, the descriptor
# set), the TypeScript client type-checked, and Go/Java stubs compiled where their toolchains are.
proto-check:
	$(BUF) lint
	$(BUF) format --diff --exit-code
	scripts/check-buf-breaking
	scripts/gen-protos --check
	scripts/gen-stubs --check
	clients/node/node_modules/.bin/tsc -p clients/node --noEmit
	scripts/check-stubs

# Records the contract as released: `make api-release VERSION=0.3.0` (see CHANGELOG.md).
api-release:
	test -n "$(VERSION)"
	$(BUF) build -o releases/vision-api-v$(VERSION).binpb
	echo "vision-api-v$(VERSION).binpb" > releases/CURRENT

