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
SRC    := splice tests bench scripts

.PHONY: setup sysdeps demo test lint fmt cov bench bench-quick bench-micro clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# system peers the tests talk to (curl, openssl, caddy, nginx, iproute2); apt, as root
sysdeps:
	@bash scripts/install_sysdeps.sh

demo: setup
	$(PY) -m splice demo

lint: setup
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

test: setup sysdeps lint
	$(PY) -m pytest --cov=splice --cov-branch --cov-report=term:skip-covered
	$(PY) -m coverage report --include='splice/wire/*,splice/routing/*' --fail-under=100

bench: setup sysdeps
	$(PY) -m bench.run --full

bench-quick: setup sysdeps
	$(PY) -m bench.run --quick

bench-micro: setup
	$(PY) -m pytest bench/test_micro.py --benchmark-only -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage build dist *.egg-info
