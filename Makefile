# Every target bootstraps what it needs: a pinned uv in .uv/, then .venv from uv.lock.
# Only Python 3.11+ and access to PyPI are required.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy

.PHONY: setup demo test bench lint format clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --compile-bytecode --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## generate four days of EKS traffic, ingest, train on three, score the last day
	$(VENV)/bin/detect demo

test: setup  ## the whole test suite, on every core (pytest-xdist)
	$(VENV)/bin/pytest -n auto

bench: setup  ## benchmarks: print events/s, MB/s and peak RSS
	$(VENV)/bin/python -m compileall -q detector
	$(VENV)/bin/python bench/run.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .uv $(VENV) .venvs lake .demo .pytest_cache .ruff_cache
