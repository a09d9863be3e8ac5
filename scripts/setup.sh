#!/usr/bin/env bash
# Creates (or reuses) the radvlsm virtual environment with every dependency, offline-safe.
# Idempotent: a stamp of the requirement files' hash skips the install when nothing changed.
# Prints the venv path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RADVLSM_VENV:-$HOME/.cache/radvlsm/venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.radvlsm-stamp"
HASH="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"

# The project is installed editable: a venv shared by several checkouts (a clone in CI, say) must point at this one.
points_here() {
  [ "$("$VENV/bin/python" -c 'import radvlsm, os; print(os.path.dirname(os.path.dirname(radvlsm.__file__)))' \
        2>/dev/null)" = "$ROOT/lib" ]
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  points_here || "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e "$ROOT" >&2
  echo "radvlsm: environment up to date at $VENV" >&2
  echo "$VENV"; exit 0
fi

echo "radvlsm: installing into $VENV (first run takes several minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip wheel "setuptools<81"
# 1. numpy and torch first: pyradiomics and sam2 (a monailabel dependency) build against them.
"${PIP[@]}" "numpy>=1.26,<2.0" torch==2.14.1 torchvision==0.29.1
# 2. source builds without isolation (pyradiomics 3.0.1 needs numpy at build time; sam2's CUDA
#    extension is optional and skipped on CPU machines).
SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 "${PIP[@]}" --no-build-isolation pyradiomics==3.0.1 sam2==1.1.0
# 3. everything else, then the project itself (editable, so `radvlsm` imports from lib/).
"${PIP[@]}" -r "$ROOT/requirements.txt"
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
echo "$HASH" > "$STAMP"
echo "$VENV"
