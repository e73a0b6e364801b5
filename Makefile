# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup server-env server-env-torch browser demo lint test test-fast clean

setup: $(VENV)/.installed

# torch is pinned and installed first: 2.13.0 resolves to the CPU wheel on CPU machines,
# while an unpinned torch would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[export,server,openvino,ray,test]"
	touch $@

# The local tritonserver runs in its own venv: nvidia-pytriton pins numpy<2.
server-env: setup
	$(BIN)/python -c "from echodeploy.client.tritonserver import ensure_server_env; ensure_server_env()"

# The gpu-torch target's models run torch inside the server: adds torch==2.13.0 to that venv
# (about 850 MB and 2 minutes, so not part of server-env, which the cpu-target tests need).
server-env-torch: server-env
	$(BIN)/python -c "from echodeploy.client.tritonserver import ensure_server_env; ensure_server_env(torch=True)"

# The report's tests open pages in Debian's Chromium (CI runs as root on Debian 12); installed once.
browser:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

demo: setup
	$(BIN)/echodeploy demo

# ruff, and the import layers checked on the package as the wheel lays it out (the source
# folders export/, client/, ... become echodeploy.export, echodeploy.client, ...).
lint: setup
	$(BIN)/ruff check .
	rm -rf build/layers build/lib  # build/lib would keep modules that were moved or deleted
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w build/layers . 2>/dev/null
	cd build/layers && $(PYTHON) -m zipfile -e *.whl . && PYTHONPATH=. ../../$(BIN)/lint-imports ../../pyproject.toml

test: lint server-env-torch browser
	$(BIN)/python -m pytest

# The working loop: pure and small real-file tests; no tritonserver, Ray, wheel install or minutes-long runs.
test-fast: setup
	$(BIN)/python -m pytest -m "not server and not ray and not wheel and not slow"

clean:
	rm -rf $(VENV) .venv-server echodeploy_demo model_repository/*/
