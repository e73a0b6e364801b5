# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup server-env demo test bench clean

setup: $(VENV)/.installed

# torch is pinned and installed first: 2.13.0 resolves to the CPU wheel on CPU machines,
# while an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[export,server,test]"
	touch $@

# The local tritonserver runs in its own venv: nvidia-pytriton pins numpy<2.
server-env: setup
	$(BIN)/python -c "from echodeploy.client.server import ensure_server_env; ensure_server_env()"

demo: setup
	$(BIN)/echodeploy demo

test: setup server-env
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .venv-server echodeploy_demo model_repository/*/
