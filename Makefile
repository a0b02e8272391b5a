# Every target bootstraps what it needs: a pinned uv in .uv/, then .venv from uv.lock.
# Only Python 3.11+ and access to PyPI are required.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy

.PHONY: setup compile demo test bench lint format clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --compile-bytecode --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	touch $(STAMP)

setup: $(STAMP)

# The package's own bytecode, as installing it from a wheel compiles it: where Python may not
# write bytecode (PYTHONDONTWRITEBYTECODE), every `detect` process otherwise compiles the
# package again (~0.7 s a process; the suite starts hundreds).
compile: setup
	$(VENV)/bin/python -m compileall -q detector

demo: compile  ## generate four days of EKS traffic, ingest, train on three, score the last day
	$(VENV)/bin/detect demo

test: compile  ## the whole test suite, on every core (pytest-xdist)
	$(VENV)/bin/pytest -n auto --dist worksteal

bench: compile  ## benchmarks: print events/s, MB/s and peak RSS
	$(VENV)/bin/python bench/run.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .uv $(VENV) .venvs lake .demo .pytest_cache .ruff_cache
