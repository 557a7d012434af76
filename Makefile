# Two commands for users: `make demo` and `make test`.  Both create .venv first
# (idempotent, fast when it exists): see tools/setup_venv.sh.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test clean

venv:
	@bash tools/setup_venv.sh

demo: venv
	$(VENV)/bin/metasparse demo --out runs/demo

test: venv
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache build *.egg-info
