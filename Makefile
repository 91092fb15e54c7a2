# Every target first creates .venv from requirements.txt when it is missing
# (or older than requirements.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

demo: $(STAMP)
	PYTHON=$(abspath $(PY)) ./run.sh --demo

bench: $(STAMP)
	$(PY) -m benchmarks.pretrain_throughput

clean:
	rm -rf $(VENV) .pytest_cache
