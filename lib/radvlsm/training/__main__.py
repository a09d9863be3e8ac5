"""``python -m radvlsm.training list|restore STORE_DIR [VERSION]``: see or roll back a served model.

STORE_DIR is e.g. ``<studies>/.radvlsm/trained/litemedsam/sam_decoder`` (the decoder), ``.../qformer_lite`` (the
proposer's fine-tuned heads) or ``.../diagnosis_head`` (the recalibrated diagnosis head); a running server picks a
restored version up on its next request.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radvlsm.versions.store import SHIPPED, DecoderStore, HeadStore, ProposerStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m radvlsm.training", description=__doc__)
    ap.add_argument("action", choices=["list", "restore"])
    ap.add_argument("store")
    ap.add_argument("version", nargs="?")
    args = ap.parse_args(argv)
    store = ProposerStore(args.store) if Path(args.store).name == "qformer_lite" else DecoderStore(args.store)
    if Path(args.store).name == "diagnosis_head" or any(Path(args.store).glob("v*.head.json")):
        store = HeadStore(args.store)
    if args.action == "restore":
        if not args.version:
            ap.error("restore needs a VERSION (e.g. v0001, or shipped)")
        try:
            store.restore(args.version)
        except ValueError as exc:
            ap.exit(2, f"error: {exc}\n")
    print(f"served: {store.current()}")
    for v in [*store.versions(), SHIPPED]:
        meta = store.metadata(v) if v != SHIPPED else {}
        keys = ("dice_before", "dice_after", "iou_before", "iou_after", "train_images", "recalibration")
        print(f"  {v}: " + json.dumps({k: meta[k] for k in keys if k in meta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
