# Pinned for reproducible set-up on the project's machines; pyproject keeps ranges for users.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo docs bench-speed bench-accuracy clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

format: install
	$(BIN)/ruff check --fix src tests benchmarks docs
	$(BIN)/ruff format src tests benchmarks docs

# the documentation site, offline, into site/ (strict: a broken link or API target fails)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

demo: install
	$(BIN)/mosa demo

bench-speed: install
	$(BIN)/mosa bench speed --device cpu --out runs/bench_speed_cpu.json

bench-accuracy: install
	$(BIN)/mosa bench accuracy --out runs/bench_accuracy

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache
