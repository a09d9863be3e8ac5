"""How long one training run takes at a new site: ``POST /train/radvlsm`` with no options on N corrections.

    python benchmarks/bench_train_time.py [--curve benchmarks/results/site_adaptation/uclm-random-site]
        [--labels 25] [--site-phrase]

The issue's target: one run on 25 images <= 5 minutes on this 2-core CPU (run it with nothing else on the machine).
The labels are the first ``--labels`` of a learning-curve state (``bench_site_adaptation.py``: the images a
strategy picked, lesion-free ones included, their reference masks as the final labels). The run is what the
server's train task runs: :func:`radvlsm.training.fine_tune` with ``TrainConfig()`` defaults (the site's phrase as
``proposer_phrases`` with ``--site-phrase``, as ``--conf site_phrases`` makes it), from the shipped decoder and the
site's start proposer, into a fresh temporary store (nothing of the curve's is written). The images are encoded and
their embeddings kept first, as the server does when each label is saved; the run reads them, as a server's
training process does. The encode time a run without them would add is printed apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_site_adaptation import site_cases  # noqa: E402
from benchmarks.common import stack_for  # noqa: E402
from radvlsm.io import load_image  # noqa: E402
from radvlsm.training import TrainConfig, TrainSample, fine_tune  # noqa: E402

TARGET_S = 300.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curve", default="benchmarks/results/site_adaptation/uclm-random-site")
    ap.add_argument("--labels", type=int, default=25)
    ap.add_argument("--site-phrase", action="store_true", help="the site names its phrase (--conf site_phrases)")
    args = ap.parse_args()
    curve = Path(args.curve)
    state_path = curve / "state.json"
    if not state_path.is_file():
        sys.exit(f"bench_train_time: no learning-curve state at {state_path}; run bench_site_adaptation.py first")
    state = json.loads(state_path.read_text())
    site = curve.name.split("-")[0]
    pool, _, phrase, start = site_cases(site)
    by_id = {c[2]: c for c in pool}
    ids = state["labelled"][: args.labels]
    if len(ids) < args.labels:
        sys.exit(f"bench_train_time: {curve} holds {len(ids)} labels, fewer than --labels {args.labels}")
    samples = [TrainSample(i, by_id[i][0], by_id[i][1]) for i in ids]
    with tempfile.TemporaryDirectory(prefix="radvlsm-train-time-") as work:
        # the served stack of the site (its start proposer, the shipped decoder), a fresh store
        stack = stack_for(runtime="auto", trained_dir=str(Path(work) / "trained"), qformer_checkpoint=str(start),
                          mask_ranker="off")
        predictor, kept = stack.predictor, stack.labelled_embeddings
        encode_s = []
        for s in samples:  # what the server does when each label is saved: encode, keep the embedding
            image = load_image(s.image_path)
            enc = predictor.encode(image)
            encode_s.append(enc.encode_ms / 1e3)
            predictor.persist(image, enc, kept)
        predictor.cache.clear()  # a training run is a process of its own: it reads the kept embeddings
        cfg = TrainConfig.from_request({"proposer_phrases": [phrase] if args.site_phrase else []})
        t = time.time()
        with predictor.using_disk_cache(kept):
            res = fine_tune(predictor, samples, stack.decoder_store, cfg, proposer=stack.text_proposer,
                            proposer_store=stack.proposer_store, text="lesion")
        total = time.time() - t
    proposer_s = float(res.proposer["seconds"]) if res.proposer else 0.0
    lesion_free = sum(not by_id[i][3] for i in ids)
    enc_s = statistics.median(encode_s)
    print(f"| labels (lesion-free) | run s | decoder s | proposer s | + encoding them s | target {TARGET_S:.0f} s |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(ids)} ({lesion_free}) | {total:.0f} | {total - proposer_s:.0f} | {proposer_s:.0f} | "
          f"{enc_s * len(ids):.0f} ({enc_s:.2f} s each, runtime {predictor.runtime.name}) | "
          f"{'met' if total <= TARGET_S else 'NOT met'} |")
    prop = res.proposer or {}
    print(f"decoder published: {res.published} ({res.reason}); proposer: {prop.get('candidate')}, "
          f"published {bool(prop.get('published'))}")


if __name__ == "__main__":
    main()
