# Two commands do all the set-up:  `make train`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: venv train test lint eval clean

# The venv is rebuilt whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

venv: $(VENV)/.installed

## Train the MLP on scikit-learn's bundled handwritten digits, then report test accuracy.
train: venv
	$(PY) trainer_vanilla.py $(ARGS)

## Run the test suite (CPU only; GPU tests skip without CUDA).
test: venv
	$(PY) -m pytest -q tests $(ARGS)

## Lint and format checks (settings in pyproject.toml); `$(VENV)/bin/ruff format .` applies the format.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
