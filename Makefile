# The README's commands. Everything runs from .venv/, which `setup` creates and fills.
SHELL := /bin/bash
VENV  := .venv/bin
export RISE_DATA_DIR ?= $(CURDIR)/.data
export TMPDIR ?= $(CURDIR)/.tmp

.PHONY: setup run test test-fast solve bench lint
setup:
	@mkdir -p "$(TMPDIR)" && bash scripts/setup.sh

## Run the service on the embedded default: bundled SmolLM2-135M-Instruct, in-memory sessions.
run: setup
	$(VENV)/python -m app

## Run every test: unit, integration (real vLLM, real Redis, real openai client), e2e, deploy.
test:
	@mkdir -p "$(TMPDIR)" && bash scripts/setup.sh --test
	$(VENV)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

## The tests that need no engine, Redis, browser or container, and are quick (~2 minutes).
test-fast:
	@mkdir -p "$(TMPDIR)" && bash scripts/setup.sh --test
	$(VENV)/python -m pytest -p no:cacheprovider \
		-m "not engine and not redis and not browser and not container and not slow" $(PYTEST_ARGS)

## One problem over several turns on the default model: make solve Q="Tom has 3 apples..."
solve: setup
	$(VENV)/python -m rise solve "$(Q)"

bench: setup
	$(VENV)/python bench/bench_loop.py

lint: setup
	$(VENV)/ruff format --check . && $(VENV)/ruff check . && $(VENV)/mypy rise
