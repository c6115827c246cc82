#!/usr/bin/env bash
# The GPU check of fp8jax: bash benchmarks/gpu/run.sh OUTDIR [--cpu] [--quick]
# Run from anywhere; it runs from the repository root so that `benchmarks` and `tests`
# import as packages. PYTHON picks the interpreter (default: python, else python3).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ "$#" -lt 1 ]; then
  echo "usage: bash benchmarks/gpu/run.sh OUTDIR [--cpu] [--quick]" >&2
  exit 2
fi
OUT="$1"
shift
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"   # absolute: the script changes directory
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu "$OUT" "$@"
