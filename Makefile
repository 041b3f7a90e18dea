# digitlab: the two commands of the README, and a few more.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test test-fast params bench bench-tracking bench-launchers bench-server compare ui study-ui stack-up stack-down stack-status clean-venv
.PHONY: check-slurm

# Create the virtual environment and install digitlab (with test tools) into it.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[dev,team,ray]'
	touch $(STAMP)

setup: $(STAMP)

# Run the whole pipeline on the configured dataset (default: embedded mnist_5k).
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The test suite (offline; real DVC, MLflow, Hydra and TensorFlow on tiny data).
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --timeout 900 $(PYTEST_ARGS)

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

# DVC's experiments in one narrow table (digitlab compare; MD=1 for Markdown).
compare: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/digitlab compare $(if $(MD),--md,)

# Rewrite params.yaml from conf/ (plus OVERRIDES="dataset=digits ..."), for a plain dvc repro.
params: $(STAMP)
	$(BIN)/digitlab params $(OVERRIDES)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Concurrent writers against the SQLite store, mlflow server on SQLite and the team stack (benchmarks/RESULTS.md).
bench-tracking: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.tracking_load $(BENCH_ARGS)

# The same sweep under each launcher (basic, joblib, Ray private/1 node/2 nodes, Optuna): overhead per job.
bench-launchers: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.launchers $(BENCH_ARGS)

# An mlflow server with and without MLflow's job runner, side by side (benchmarks/RESULTS.md).
bench-server: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.server_start $(BENCH_ARGS)

# The MLflow UI over the project's store, at http://127.0.0.1:5000 (UI_PORT=...; without MLflow's job runner: benchmarks/server_start.py)
UI_PORT ?= 5000
ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT)

# Optuna's dashboard over the project's studies (optuna.db), at http://127.0.0.1:8080
study-ui: $(STAMP)
	$(BIN)/optuna-dashboard sqlite:///optuna.db --host 127.0.0.1 --port 8080

# The team stack: MLflow server (:5151) + PostgreSQL + S3 bucket, also the DVC remote (README "Working as a team").
stack-up: $(STAMP)
	$(BIN)/digitlab stack up $(STACK_ARGS)

stack-down: $(STAMP)
	$(BIN)/digitlab stack down $(STACK_ARGS)

stack-status: $(STAMP)
	$(BIN)/digitlab stack status $(STACK_ARGS)

clean-venv:
	rm -rf $(VENV)

# A 2-job sweep through hydra/launcher=slurm on a throwaway single-node SLURM cluster (docs/slurm.md).
# Not part of `make test`; needs root (installs slurm-wlm and munge with apt-get when missing).
check-slurm: $(STAMP)
	VENV="$(VENV)" scripts/check-slurm
