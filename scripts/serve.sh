#!/usr/bin/env bash
# Sets everything up (first run only) and serves the bundled samples with the embedded LiteMedSAM model.
#   bash scripts/serve.sh                      # http://127.0.0.1:8000 (Slicer, OHIF at /ohif/, REST /infer)
#   bash scripts/serve.sh --port 8010 --conf backbone sam_vit_b --conf checkpoint /path/sam_vit_b_01ec64.pth
# Env: RADVLSM_STUDIES (default ./work/studies, seeded from samples/images; or a DICOMweb root http(s)://...),
#      RADVLSM_HOST (127.0.0.1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/setup.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
STUDIES="${RADVLSM_STUDIES:-$ROOT/work/studies}"
if [[ "$STUDIES" != http://* && "$STUDIES" != https://* && ! -d "$STUDIES" ]]; then  # a URL: DICOMweb
  mkdir -p "$STUDIES"
  cp "$ROOT"/samples/images/* "$STUDIES"/
  echo "radvlsm: seeded $STUDIES with $(ls "$STUDIES" | wc -l) bundled samples" >&2
fi
cd "$ROOT"
exec monailabel start_server --app "$ROOT/apps/radvlsm" --studies "$STUDIES" \
  --host "${RADVLSM_HOST:-127.0.0.1}" --port 8000 "$@"
