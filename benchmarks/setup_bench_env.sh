#!/usr/bin/env bash
# bash benchmarks/setup_bench_env.sh
#
# Builds .venv-bench, the separate environment that benchmarks/losses.py uses for the
# peer-library path (TRL's generalized_jsd_loss). TRL is not a dependency of opd, so it
# lives here and nowhere else. torch is pinned in the same command so pip never pulls
# the CUDA wheels. Idempotent: an existing environment with TRL importable is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-.venv-bench}"
PYTHON="${PYTHON:-python3.11}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import trl, torch" 2>/dev/null; then
  echo "$VENV ready: $("$VENV/bin/python" -c 'import trl, torch; print("trl", trl.__version__, "torch", torch.__version__)')"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet \
  "torch==2.13.0" "trl==1.16.0" "torch==2.13.0"
"$VENV/bin/python" -c 'import trl, torch; print("trl", trl.__version__, "torch", torch.__version__)'
