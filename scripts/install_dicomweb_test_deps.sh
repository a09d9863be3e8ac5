#!/usr/bin/env bash
# What the DICOMweb/OHIF tests need beyond the venv, installed once (a no-op when already there):
#   * Debian packages `orthanc` + `orthanc-dicomweb` (a real DICOMweb server; tests/test_server_dicomweb.py)
#   * Debian package `chromium` and npm `playwright-core` (the OHIF browser test; no browser download: Playwright
#     drives /usr/bin/chromium). playwright-core goes to work/node/ (gitignored).
# .ci/run calls this before the suite. Needs root (or sudo) for apt-get; reaches only Debian's and npm's registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLAYWRIGHT_VERSION="1.65.1"

need=()
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm > /dev/null || need+=(npm)
if ((${#need[@]})); then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "install_dicomweb_test_deps: apt-get install ${need[*]}" >&2
    $SUDO apt-get update -qq
    # the orthanc package registers a system service; nothing here starts it (the tests run their own Orthanc)
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

NODE_DIR="$ROOT/work/node"
if ! grep -qs "\"version\": \"$PLAYWRIGHT_VERSION\"" "$NODE_DIR/node_modules/playwright-core/package.json"; then
    echo "install_dicomweb_test_deps: npm install playwright-core@$PLAYWRIGHT_VERSION in $NODE_DIR" >&2
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || echo '{"name": "radvlsm-browser-tests", "private": true}' > "$NODE_DIR/package.json"
    (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error \
        "playwright-core@$PLAYWRIGHT_VERSION" >&2)
fi
