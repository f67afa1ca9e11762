# The two set-up commands are `make run` and `make test`; see README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Installs what a target needs from the system's packages, or says what to install.
SYSTEM := PYTHON=$(PYTHON) scripts/ensure-system

.PHONY: run test lint bench clean system-run system-test system-bench

system-run system-test system-bench: system-%:
	@$(SYSTEM) $*

$(VENV)/.installed: pyproject.toml | system-run
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e ".[test]"
	@touch $@

run: system-run $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap
	$(PY) manage.py serve

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run

test: system-test lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: system-bench $(VENV)/.installed-test
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/staticfiles .pytest_cache .ruff_cache
