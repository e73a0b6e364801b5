#!/usr/bin/env bash
# The GPU benchmark in one go: `echodeploy gpu-bench` into one folder (< 8 min on one H200).
#
#   benchmarks/gpu.sh --fetch-wheels   on a machine with a package index: the wheels a bare
#                                      GPU image lacks (pydicom) into .whl/
#   benchmarks/gpu.sh [OUT] [OPTIONS]  on the GPU machine: runs this checkout with the python3
#                                      that has CUDA torch (PYTHON=...), nothing installed from
#                                      the network; OPTIONS go to `echodeploy gpu-bench`
#
# On a machine without a GPU it runs the reduced form (see docs/BENCHMARKS.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=(pydicom==3.0.2)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d .whl "${WHEELS[@]}"
    ls .whl
    exit 0
fi
OUT=${1:-gpu_bench}
shift || true

# This checkout as the `echodeploy` package without installing it: the folders export/, client/,
# preprocessing/ and benchmarks/ are its sub-packages (as setup.py lays them out).
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
mkdir "$SITE/echodeploy"
for file in "$PWD"/echodeploy/*.py; do ln -s "$file" "$SITE/echodeploy/"; done
for folder in export client preprocessing benchmarks; do ln -s "$PWD/$folder" "$SITE/echodeploy/$folder"; done
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE/wheels" .whl/*.whl
fi
export PYTHONPATH="$SITE:$SITE/wheels${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import echodeploy.benchmarks.gpu" || {
    echo "missing packages: run 'benchmarks/gpu.sh --fetch-wheels' where pip reaches an index, bring .whl/" >&2
    exit 2
}
"$PYTHON" -m echodeploy gpu-bench --out "$OUT" "$@"
