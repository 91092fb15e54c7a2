# Every target first creates .venv from requirements.txt (the exact pins) when it is missing
# (or older than requirements.txt or pyproject.toml), then installs this package into it
# (editable, so the `wmdd` command runs this checkout).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

demo: $(STAMP)
	$(VENV)/bin/wmdd demo

bench: $(STAMP)
	$(PY) -m benchmarks.pretrain_throughput

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
