# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000

.PHONY: run test lint screenshots clean wheelhouse

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

# What an air-gapped GPU node installs a worker from (docs/gpu-worker.md): wheels for its
# Python and platform without torch (the node keeps its own CUDA build), bubblewrap's .deb,
# install.py and a manifest with every file's sha256. WHEELHOUSE_ARGS="--exclude numpy"
# saves 15 MiB where the node has numpy.
WHEELHOUSE_PYTHON   ?= 3.12
WHEELHOUSE_PLATFORM ?= manylinux_2_28_x86_64

wheelhouse: $(VENV)/.run-deps
	$(PY) -m runner wheelhouse build --out wheelhouse \
		--python-version $(WHEELHOUSE_PYTHON) --platform $(WHEELHOUSE_PLATFORM) $(WHEELHOUSE_ARGS)

# Refresh docs/screenshots/ from the browser tests (they skip writing them otherwise).
screenshots: $(VENV)/.test-deps
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/browser -q

clean:
	rm -rf var .pytest_cache .ruff_cache
