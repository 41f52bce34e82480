# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
STAMP := .install.stamp

.PHONY: install demo test bench clean

# Installs into the current Python (a venv or conda env if one is active). Re-runs only when requirements change.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the whole pipeline on the embedded demo -> outputs/submission.csv
	$(PYTHON) pipeline.py run --params params/demo.yaml

test: install  ## the test suite (about 6 minutes on 2 cores)
	$(PYTHON) -m pytest -q

bench: install  ## benchmarks: demo end-to-end time, collab RMSE/seconds
	$(PYTHON) bench/demo.py
	$(PYTHON) bench/collab.py demo

clean:
	rm -rf outputs $(STAMP)
