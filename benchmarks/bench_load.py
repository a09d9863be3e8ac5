"""Load on one real server (loopback): 1, 2 and 4 concurrent clients, each sending N mixed ``sam`` / ``radvlsm``
requests on different datastore images; every answer is checked against the image it was asked about.

    python benchmarks/bench_load.py --n 6                   # the recorded run (benchmarks/recorded/bench_load.md)
    python benchmarks/bench_load.py --n 50 --clients 4      # the issue's 4 x 50

Checks, per answer: HTTP 200; ``image_shape`` is the asked image's; for ``sam`` (prompted with the image's
reference box) the mask's Dice with that image's reference mask >= 0.5 and its box within 2 px of the one the
same request got alone (sequential reference pass); for ``radvlsm`` the lesion boxes within 2 px of the reference
pass's. A cross-talk between images in the embedding cache (an answer computed on another image's embedding)
breaks these. The embedding cache is kept small (``--cache-mb``, default 24 MB = 6 LiteMedSAM embeddings for the
14 sample images), so encodes, evictions and hits interleave under concurrency. The server's resident memory
(process tree) is sampled every 0.2 s; the run fails if it exceeds ``--max-rss-mb``.

Prints one markdown row per concurrency: requests, errors, wrong answers, throughput, latency p50/p95 (all, sam,
radvlsm), cache hits, peak RSS. The recorded runs predate the worker pool (``apps/radvlsm/lib/server/workers.py``):
MONAI Label then ran ``/infer`` on its event loop, one inference at a time. ``bench_serving.py`` measures what the
pool changes (``/info`` and cached prompts while a pipeline runs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radvlsm.geometry import mask_dice, mask_to_box  # noqa: E402
from radvlsm.io import load_mask  # noqa: E402
from tests.conftest import SAMPLES, start_server, stop_server  # noqa: E402

CASES = sorted(p.stem for p in (SAMPLES / "images").glob("*.png"))


def reference(case: str) -> np.ndarray:
    return load_mask(SAMPLES / "reference" / f"{case}.png") > 0


def request(url: str, task: str, case: str) -> tuple[float, dict, np.ndarray | None]:
    """One inference; for ``sam`` the label too (multipart ``output=all``)."""
    params = {"boxes": [mask_to_box(reference(case))], "result_extension": ".png"} if task == "sam" else \
        {"diagnose": False, "result_extension": ".png"}
    t = time.perf_counter()
    r = requests.post(f"{url}/infer/{task}", params={"image": case, "output": "all" if task == "sam" else "json"},
                      files={"params": (None, json.dumps(params))}, timeout=900)
    ms = (time.perf_counter() - t) * 1e3
    if r.status_code != 200:
        raise RuntimeError(f"{task} {case}: HTTP {r.status_code} {r.text[:200]}")
    if task != "sam":
        return ms, r.json(), None
    from requests_toolbelt.multipart import decoder

    parts = decoder.MultipartDecoder.from_response(r).parts
    res, mask = {}, None
    for part in parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            res = json.loads(part.content)
        elif 'name="image"' in disposition:
            mask = np.array(Image.open(io.BytesIO(part.content))) > 0
    return ms, res, mask


def boxes(res: dict) -> list[list[float]]:
    return [lesion["box"] for lesion in res.get("lesions", [])]


def same_boxes(a: list, b: list, tol: float = 2.0) -> bool:
    return len(a) == len(b) and all(np.max(np.abs(np.subtract(x, y))) <= tol for x, y in zip(a, b, strict=True))


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)


def check(task: str, case: str, res: dict, mask, ref_answers: dict) -> str | None:
    """None if the answer is the asked image's, else what is wrong."""
    shape = list(reference(case).shape)
    if res.get("image_shape") != shape:
        return f"image_shape {res.get('image_shape')} != {shape}"
    if task == "sam":
        d = mask_dice(mask, reference(case)) if mask is not None and mask.shape == reference(case).shape else 0.0
        if d < 0.5:
            return f"sam Dice with the image's reference {d:.3f} < 0.5"
    expected = ref_answers.get((task, case))
    if expected is not None and not same_boxes(boxes(res), expected):
        return f"boxes {boxes(res)} != alone {expected}"
    return None


def run_level(url: str, clients: int, n: int, ref_answers: dict, sampler: RssSampler) -> dict:
    jobs = []
    for c in range(clients):  # each client walks the images from its own offset: different images at once
        start = (c * len(CASES)) // clients
        jobs.append([("sam" if i % 2 == 0 else "radvlsm", CASES[(start + i) % len(CASES)]) for i in range(n)])
    lat: dict[str, list[float]] = {"sam": [], "radvlsm": []}
    errors, wrong, hits = [], [], 0
    sampler.peak = 0

    def client(job):
        nonlocal hits
        for task, case in job:
            try:
                ms, res, mask = request(url, task, case)
            except Exception as exc:  # counted, reported
                errors.append(str(exc))
                continue
            lat[task].append(ms)
            hits += int(bool(res.get("cache_hit", res.get("encodes", 1) == 0)))
            problem = check(task, case, res, mask, ref_answers)
            if problem:
                wrong.append(f"{task} {case}: {problem}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, jobs))
    wall = time.perf_counter() - t0
    every = lat["sam"] + lat["radvlsm"]
    q = lambda xs, p: float(np.percentile(xs, p)) if xs else float("nan")  # noqa: E731
    return {"clients": clients, "requests": clients * n, "errors": errors, "wrong": wrong,
            "throughput": len(every) / wall, "p50": q(every, 50), "p95": q(every, 95),
            "sam_p50": q(lat["sam"], 50), "sam_p95": q(lat["sam"], 95), "radvlsm_p50": q(lat["radvlsm"], 50),
            "radvlsm_p95": q(lat["radvlsm"], 95), "hits": hits, "rss_mb": sampler.peak / 2**20, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="requests per client")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cache-mb", type=int, default=24)
    ap.add_argument("--max-rss-mb", type=float, default=6000)
    args = ap.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_load-") as tmp:
        srv = start_server(Path(tmp), conf={"models": "sam,radvlsm", "cache_mb": str(args.cache_mb)}, timeout=900)
        sampler = RssSampler(srv.proc.pid)
        sampler.start()
        try:
            ref_answers = {}  # each (task, image) alone, one at a time: what every concurrent answer must match
            for task in ("sam", "radvlsm"):
                for case in CASES:
                    _, res, mask = request(srv.url, task, case)
                    problem = check(task, case, res, mask, {})
                    assert problem is None, f"reference pass, {task} {case}: {problem}"
                    ref_answers[(task, case)] = boxes(res)
            rows = [run_level(srv.url, c, args.n, ref_answers, sampler) for c in args.clients]
        finally:
            sampler.stop.set()
            stop_server(srv.proc)
    load_after = os.getloadavg()

    print(f"# bench_load: {' '.join(sys.argv[1:]) or '(defaults)'}\n")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"load average before {load_before[0]:.2f}/{load_before[1]:.2f}, after {load_after[0]:.2f}; "
          f"server: models sam,radvlsm, cache_mb {args.cache_mb}, {len(CASES)} sample images; requests alternate "
          "sam (reference box, label fetched) / radvlsm (text 'lesion', diagnose off)\n")
    print("| clients | requests | errors | wrong answers | throughput (req/s) | p50 ms | p95 ms | sam p50 / p95 ms | "
          "radvlsm p50 / p95 ms | cache hits | peak server RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {len(r['errors'])} | {len(r['wrong'])} | {r['throughput']:.2f} | "
              f"{r['p50']:.0f} | {r['p95']:.0f} | {r['sam_p50']:.0f} / {r['sam_p95']:.0f} | "
              f"{r['radvlsm_p50']:.0f} / {r['radvlsm_p95']:.0f} | {r['hits']}/{r['requests']} | {r['rss_mb']:.0f} |")
    problems = [p for r in rows for p in r["errors"] + r["wrong"]]
    for p in problems[:20]:
        print(f"- {p}")
    peak = max(r["rss_mb"] for r in rows)
    print(f"\nerrors + wrong answers: {len(problems)}; peak RSS {peak:.0f} MB (bound {args.max_rss_mb:.0f} MB): "
          f"{'within' if peak <= args.max_rss_mb else 'EXCEEDED'}")
    sys.exit(1 if problems or peak > args.max_rss_mb else 0)


if __name__ == "__main__":
    main()
