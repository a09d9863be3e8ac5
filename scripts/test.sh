#!/usr/bin/env bash
# Sets everything up (first run only), lints, and runs the whole test suite (real server on loopback included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/setup.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$ROOT"
ruff check lib apps tests benchmarks scripts
exec python -m pytest -ra "$@"
