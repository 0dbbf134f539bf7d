#!/usr/bin/env bash
# The GPU check (benchmarks/gpu.py): every model kind trained for one epoch, a multiple imputation, the tabular
# estimators, the benchmark suite and the smoke study, all on CUDA, in at most 10 minutes on one NVIDIA GPU.
# Exit status 0 only if all of it worked.
#
#   bash benchmarks/gpu.sh               # needs a CUDA build of torch in the project's environment
#   bash benchmarks/gpu.sh --dry-run     # on a CPU: the same steps on the CPU, small (the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}  # the project's environment, or the Python named in $PYTHON
exec "$python" benchmarks/gpu.py "$@"
