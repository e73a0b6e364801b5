# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch is pinned and installed first: 2.13.0 resolves to the CPU wheel on CPU machines,
# while an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[export,server,plots,test]"
	touch $@

demo: setup
	$(BIN)/echodeploy demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) echodeploy_demo model_repository/*/
