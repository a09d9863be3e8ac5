#!/usr/bin/env bash
# A local Orthanc with its DICOMweb plugin for trying the app over DICOMweb (Debian packages orthanc and
# orthanc-dicomweb: scripts/install_dicomweb_test_deps.sh installs them). Storage in work/orthanc/ (kept between runs).
#   bash scripts/orthanc.sh            # REST http://127.0.0.1:8042, DICOMweb http://127.0.0.1:8042/dicom-web
# Env: ORTHANC_HTTP_PORT (8042), ORTHANC_DICOM_PORT (4242), ORTHANC_DIR (work/orthanc).
# HTTP answers loopback clients only; the DICOM port (Orthanc 1.10 has no bind address) accepts no modality until
# you list one under "DicomModalities" in work/orthanc/orthanc.json (rewritten at each start: edit this script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${ORTHANC_DIR:-$ROOT/work/orthanc}"
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
[ -x /usr/sbin/Orthanc ] && [ -e "$PLUGIN" ] || { echo "orthanc.sh: run scripts/install_dicomweb_test_deps.sh first" >&2; exit 2; }
mkdir -p "$DIR/db"
cat > "$DIR/orthanc.json" <<JSON
{
  "Name": "radvlsm",
  "StorageDirectory": "$DIR/db",
  "IndexDirectory": "$DIR/db",
  "HttpPort": ${ORTHANC_HTTP_PORT:-8042},
  "DicomPort": ${ORTHANC_DICOM_PORT:-4242},
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomModalities": {},
  "DicomAlwaysAllowEcho": false, "DicomAlwaysAllowStore": false, "DicomAlwaysAllowFind": false,
  "DicomAlwaysAllowMove": false, "DicomAlwaysAllowGet": false,
  "Plugins": ["$PLUGIN"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": true, "WadoRoot": "/wado", "Ssl": false,
               "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
}
JSON
exec /usr/sbin/Orthanc "$DIR/orthanc.json"
