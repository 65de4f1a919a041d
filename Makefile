# The two commands of the README: `make run` (set up, local Triton + service) and `make test`
# (set up, static checks, the whole test suite against a real local Triton).
.PHONY: setup run test check lint typecheck proto proto-check unit integration

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

check: lint typecheck proto-check

lint:
	.venv/bin/ruff check .

typecheck:
	.venv/bin/mypy

# Regenerates vision/ from protos/ (commit the result).
proto:
	scripts/gen-protos

# buf lint + format, breaking changes against the main branch, and stale generated code.
proto-check:
	$(BUF) lint
	$(BUF) format --diff --exit-code
	if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
	  $(BUF) breaking --against '.git#branch=main'; fi
	scripts/gen-protos --check

