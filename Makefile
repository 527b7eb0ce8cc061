# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000

.PHONY: run test lint screenshots clean

# A virtualenv per purpose, reinstalled when the dependency files change.
$(VENV)/.run-deps: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[worker]"
	touch $@

$(VENV)/.test-deps: $(VENV)/.run-deps
	$(PY) -m pip install --quiet -c constraints.txt -e ".[prod,worker,dev]"
	touch $@

run: $(VENV)/.run-deps
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py load_curriculum
	DEBUG=1 $(PY) manage.py load_labs
	DEBUG=1 PORT=$(PORT) $(PY) manage.py runstack

test: $(VENV)/.test-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
