"""Serving while another user's heavy request runs (real server on loopback): are ``/info`` and a cached ``sam``
prompt answered promptly while a new-image ``radvlsm`` pipeline runs?

    python benchmarks/bench_serving.py [--seconds 40] [--workers 4] [--encoder-nice N]
    # --workers 0: MONAI Label's own /infer; --encoder-nice: --conf encoder_nice (the encoder in a niced process)

Idle first: a cached ``sam`` prompt (the sample's reference box, JSON answer) and ``GET /info/``, each alone. Then
under load: one client posts new-image pipelines back to back (each upload has pixels no request sent before, so
every one encodes), while a second client sends cached ``sam`` prompts on other images and a third polls
``/info/``, all for ``--seconds``. Every ``sam`` answer is checked against its own image (its lesion box equals the
prompt's); the pipeline answers are checked for 200. Prints p50/p95 per kind, the pipeline's ``latencies_ms.queue``
and the issue's targets: ``/info`` p95 <= 50 ms and cached prompt p95 <= 2x idle under load, 0 errors.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radvlsm.geometry import mask_to_box  # noqa: E402
from radvlsm.io import load_mask  # noqa: E402
from tests.conftest import SAMPLES, start_server, stop_server  # noqa: E402

CASES = sorted(p.stem for p in (SAMPLES / "images").glob("*.png"))
INFO_P95_MS, PROMPT_FACTOR = 50.0, 2.0


def box(case: str) -> list[float]:
    return mask_to_box(load_mask(SAMPLES / "reference" / f"{case}.png") > 0)


def prompt(url: str, case: str) -> tuple[float, str | None]:
    """A cached ``sam`` prompt; (ms, what is wrong or None)."""
    b = box(case)
    t = time.perf_counter()
    r = requests.post(f"{url}/infer/sam", params={"image": case, "output": "json"},
                      files={"params": (None, json.dumps({"boxes": [b]}))}, timeout=600)
    ms = (time.perf_counter() - t) * 1e3
    if r.status_code != 200:
        return ms, f"HTTP {r.status_code}"
    got = r.json()["lesions"][0]["box"]
    return ms, None if np.allclose(got, np.round(b, 2), atol=0.01) else f"box {got} != {b}"


def info(url: str) -> float:
    t = time.perf_counter()
    requests.get(f"{url}/info/", timeout=600).raise_for_status()
    return (time.perf_counter() - t) * 1e3


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--workers", type=int, default=4, help="--conf infer_workers (0: MONAI Label's own /infer)")
    ap.add_argument("--encoder-nice", type=int, default=None,
                    help="--conf encoder_nice (default: the server's own default)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    conf = {"models": "sam,radvlsm", "infer_workers": str(args.workers)}
    if args.encoder_nice is not None:
        conf["encoder_nice"] = str(args.encoder_nice)
    srv = start_server(tmp, conf=conf)
    url, errors = srv.url, []
    heavy_case, prompt_cases = CASES[0], CASES[1:5]
    try:
        for case in prompt_cases:  # cache these embeddings
            prompt(url, case)
        idle_prompt = [prompt(url, prompt_cases[i % 4])[0] for i in range(20)]
        idle_info = [info(url) for _ in range(20)]
        pixels = np.array(Image.open(SAMPLES / "images" / f"{heavy_case}.png"))
        stop = threading.Event()
        heavy, loaded_prompt, loaded_info, queue = [], [], [], []

        def pipelines():
            k = 0
            while not stop.is_set():
                k += 1
                px = pixels.copy()
                px[0, :4] = (px[0, :4].astype(int) + k) % 256  # pixels never sent before: it must encode
                buf = io.BytesIO()
                Image.fromarray(px).save(buf, format="PNG")
                t = time.perf_counter()
                r = requests.post(f"{url}/infer/radvlsm", params={"output": "json"},
                                  files={"params": (None, json.dumps({"text": "lesion", "diagnose": False})),
                                         "file": (f"new{k}.png", buf.getvalue())}, timeout=600)
                heavy.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    errors.append(f"radvlsm HTTP {r.status_code}")
                else:
                    queue.append(r.json()["latencies_ms"].get("queue", float("nan")))

        def prompts():
            i = 0
            while not stop.is_set():
                ms, wrong = prompt(url, prompt_cases[i % 4])
                i += 1
                loaded_prompt.append(ms)
                if wrong:
                    errors.append(f"sam {wrong}")
                time.sleep(0.05)

        def infos():
            while not stop.is_set():
                loaded_info.append(info(url))
                time.sleep(0.1)

        threads = [threading.Thread(target=f) for f in (pipelines, prompts, infos)]
        for th in threads:
            th.start()
        time.sleep(args.seconds)
        stop.set()
        for th in threads:
            th.join()
    finally:
        stop_server(srv.proc)
    lines = [f"machine: {platform.node()}, {platform.machine()}; server: models sam,radvlsm, infer_workers "
             f"{args.workers}, encoder_nice {conf.get('encoder_nice', 'default')}; {args.seconds:.0f} s under load\n",
             "| kind | idle p50 / p95 ms | under load: n | p50 / p95 ms |", "|---|---|---|---|",
             f"| GET /info/ | {pct(idle_info, 50):.1f} / {pct(idle_info, 95):.1f} | {len(loaded_info)} | "
             f"{pct(loaded_info, 50):.1f} / {pct(loaded_info, 95):.1f} |",
             f"| cached sam prompt | {pct(idle_prompt, 50):.1f} / {pct(idle_prompt, 95):.1f} | {len(loaded_prompt)} | "
             f"{pct(loaded_prompt, 50):.1f} / {pct(loaded_prompt, 95):.1f} |",
             f"| new-image radvlsm pipeline (the load) | - | {len(heavy)} | "
             f"{pct(heavy, 50):.0f} / {pct(heavy, 95):.0f} |",
             f"\npipeline latencies_ms.queue: p50 {pct(queue, 50):.1f} ms, max {max(queue, default=float('nan')):.1f}"
             f" ms; errors and wrong answers: {len(errors)} {errors[:3]}",
             f"\ntargets: /info p95 <= {INFO_P95_MS:.0f} ms under load: "
             f"{'met' if pct(loaded_info, 95) <= INFO_P95_MS else 'NOT met'}; cached prompt p95 <= "
             f"{PROMPT_FACTOR:.0f}x idle ({PROMPT_FACTOR * pct(idle_prompt, 95):.0f} ms): "
             f"{'met' if pct(loaded_prompt, 95) <= PROMPT_FACTOR * pct(idle_prompt, 95) else 'NOT met'}; "
             f"0 errors: {'met' if not errors else 'NOT met'}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
