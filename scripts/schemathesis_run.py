"""Bounded schemathesis run against the app's OpenAPI schema on a real server (loopback): no 5xx allowed.

schemathesis is not a project dependency (it pins its own hypothesis and friends); install it in a separate venv:

    python3 -m venv /tmp/st-venv && /tmp/st-venv/bin/pip install schemathesis
    python scripts/schemathesis_run.py --st /tmp/st-venv/bin/st            # in the project venv

Long-running operations are left out (train, batch, scoring, WSI, logs): they start background work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server, stop_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--st", default="st", help="the schemathesis CLI")
    ap.add_argument("--max-examples", type=int, default=6)
    args = ap.parse_args()
    srv = start_server(Path(tempfile.mkdtemp(prefix="schemathesis-")), conf={"models": "sam,radvlsm"})
    try:
        cmd = [args.st, "run", f"{srv.url}/openapi.json", "-c", "not_a_server_error", "-n", str(args.max_examples),
               "--request-timeout", "120", "--generation-deterministic", "-w", "1", "--exclude-deprecated",
               "--exclude-path-regex", "^/(train|batch|scoring|infer/wsi|logs)"]
        print(" ".join(cmd), flush=True)
        sys.exit(subprocess.run(cmd, timeout=1800).returncode)
    finally:
        stop_server(srv.proc)


if __name__ == "__main__":
    main()
