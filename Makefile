# Two commands do all set-up on a fresh machine:  make demo  |  make test
# They install into a project virtualenv, .venv, made with $(PYTHON) (any Python 3.10+), so a distribution's Python
# that refuses `pip install` (PEP 668, "externally-managed-environment") works too. A virtualenv or conda env that
# is already active (VIRTUAL_ENV / CONDA_PREFIX set) is used as it is instead.
PYTHON ?= python3

ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
VENV :=
PY := $(PYTHON)
STAMP := .install.stamp
else
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install.stamp
endif

.PHONY: install demo test bench clean

ifneq ($(VENV),)
$(PY):
	$(PYTHON) -m venv $(VENV)
endif

# Installs once; again only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml | $(if $(VENV),$(PY))
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the whole pipeline on the embedded demo -> outputs/submission.csv (two jobs at once, one per core)
	$(PY) pipeline.py run --params params/demo.yaml --jobs 2

test: install  ## the test suite (runs the demo end to end too)
	$(PY) -m pytest -q -n auto --dist loadgroup

bench: install  ## benchmarks: demo end-to-end time, collab RMSE/seconds
	$(PY) bench/demo.py
	$(PY) bench/collab.py demo
	$(PY) bench/data_hash.py

clean:
	rm -rf outputs .install.stamp $(VENV)/.install.stamp  # keeps .venv; delete it by hand to rebuild
