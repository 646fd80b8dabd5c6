# Two commands for a fresh machine (each sets itself up: Debian packages when root, .venv, pip):
#   make demo   the full visual report on the embedded model and data: report/index.html
#   make test   the whole test suite
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint test-all bench clean

demo:
	@scripts/setup.sh demo
	$(BIN)/zfnet report --out report/
	@echo "open report/index.html in a browser (or: $(BIN)/zfnet serve report)"

# two workers on two cores, each test file on one worker (its module fixtures built once), one thread each
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: lint
	$(PYTEST)

lint:  # ruff (lint + format) and mypy, as CI runs them
	@scripts/setup.sh test
	$(BIN)/ruff check zfnet tests bench scripts
	$(BIN)/ruff format --check zfnet tests bench scripts
	$(BIN)/mypy

test-all:  # also the slow real-data runs
	@scripts/setup.sh test
	$(PYTEST) -m ""

bench:
	@scripts/setup.sh bench
	$(BIN)/python bench/train_throughput.py --json bench/results/train_throughput.json
	$(BIN)/python bench/deconv.py --json bench/results/deconv.json
	$(BIN)/python bench/atlas.py --json bench/results/atlas.json
	$(BIN)/python bench/occlusion.py --json bench/results/occlusion.json
	$(BIN)/python bench/dedupe.py --json bench/results/dedupe.json
	$(BIN)/python bench/report.py --json bench/results/report.json
	$(BIN)/python bench/peers.py --json bench/results/peers.json
	$(BIN)/python bench/explore.py --json bench/results/explore.json

clean:
	rm -rf report .pytest_cache
