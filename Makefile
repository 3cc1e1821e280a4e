# splice — the two commands a fresh machine needs: `make demo` and `make test`.
# The venv's interpreter: the distribution's /usr/bin/python3 when it is 3.11+ and can
# make a venv (Debian's links libpython in and is built with PGO + LTO: ~20 % less user
# CPU per request in splice than pyenv's default build; bench/README.md, "Which
# Python"), else the first python3 on PATH. `make PYTHON=python3.12 ...` overrides.
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do \
	$$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; exit; }; done; echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SRC    := splice tests bench scripts setup.py
# splice as `pipx install .` builds it: the per-request modules compiled by mypyc
# (setup.py). The dev venv's editable install stays interpreted (edits apply at once,
# coverage sees the lines); this directory holds the compiled build next to it.
COMPILED := build/compiled
# the compiled build first on the path; PYTHONSAFEPATH keeps the working directory (the
# source tree) from shadowing it in `python -m` children; the tree after, for scripts/
RUN_COMPILED := SPLICE_EXPECT_BUILD=mypyc PYTHONSAFEPATH=1 PYTHONPATH=$(CURDIR)/$(COMPILED):$(CURDIR)

.PHONY: setup sysdeps compiled demo test lint fmt cov bench bench-quick bench-micro clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	SPLICE_COMPILE=0 $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# system packages: the peers the tests talk to (curl, openssl, caddy, nginx, iproute2)
# and a C compiler with Python's headers for mypyc; apt, as root
sysdeps:
	@PYTHON=$(PYTHON) bash scripts/install_sysdeps.sh

compiled: $(COMPILED)/.built

$(COMPILED)/.built: $(STAMP) setup.py pyproject.toml $(shell find splice -name '*.py' -o -name '*.c') | sysdeps
	rm -rf build
	SPLICE_COMPILE=1 $(PY) -m pip install -q --no-deps --no-build-isolation --target $(COMPILED) .
	touch $@

demo: setup
	$(PY) -m splice demo

lint: setup
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

# the suite twice: on the sources interpreted, with coverage; then on the compiled
# build, which is what users run (packaging builds its own wheels: once is enough)
test: setup sysdeps lint compiled
	SPLICE_EXPECT_BUILD=interpreted $(PY) -m pytest --cov=splice --cov-branch --cov-report=term:skip-covered
	$(PY) -m coverage report --include='splice/wire/*,splice/routing/*' --fail-under=100
	$(RUN_COMPILED) $(PY) -m pytest -p no:cacheprovider --ignore=tests/test_packaging.py

bench: setup sysdeps compiled
	$(PY) -m bench.run --full

bench-quick: setup sysdeps compiled
	$(PY) -m bench.run --quick

bench-micro: setup compiled
	$(PY) -m pytest bench/test_micro.py --benchmark-only -p no:cacheprovider
	$(RUN_COMPILED) $(PY) -m pytest bench/test_micro.py --benchmark-only -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage build dist *.egg-info
