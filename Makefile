# One command per job: `make test` (set up + run the tests), `make pipeline` (set up + dvc repro).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast pipeline kernel clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name weakalign --display-name "weakalign" >/dev/null
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not mirror"

pipeline: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

clean-venv:
	rm -rf $(VENV)
