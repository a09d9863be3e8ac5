"""Volumes slice by slice on lgg-mri (brain FLAIR, 10 patients), leave-patient-out.

    python benchmarks/bench_volume.py [--limit N] [--options '{"proposer_scope": "heads"}'] [--work DIR]
        [--timing 3] [--remeasure] [--timing-only] [--stride 1] [--strides 1 2 3] [--report]

Through the served code (``radvlsm.volume_tasks`` / ``radvlsm.volume_pipeline``, encoder runtime ``auto``):

* **reference box per slice**: every tumour slice prompted with the tight box of its reference mask; mean Dice;
* **one box propagated**: the slice with the largest tumour prompted with its reference box, carried through the
  volume (:mod:`radvlsm.propagation` defaults); 3D Dice per patient;
* **text on the whole volume**: :func:`radvlsm.volume_pipeline.text_on_volume` on every slice; 3D Dice per
  patient (0 when nothing is found), the share of tumour-free slices left empty and of tumour slices found;
  with "lesion" (the default phrase) and "brain tumour";
* **time per volume** (``--timing`` patients, fresh embedding cache, a warm server: the runtime's first encode,
  which compiles or loads the encoder, is made on a blank slice first and reported apart as ``warm-up s``): the
  text pipeline and a propagation, both scaled to 30 slices, and the text pipeline's stages summed over slices.

Each figure is given for the shipped models and for **site-adapted** ones: the patients are split in two halves
(A: the first five by name, B: the others); :func:`radvlsm.training.fine_tune` (what ``POST /train/radvlsm``
runs, with ``--options``; default ``{"proposer_scope": "heads"}``) learns from one half's reference masks (each
volume's tumour slices and as many tumour-free ones, :func:`radvlsm.training.data.volume_samples`) and the other
half is measured, so no patient is measured by a model that saw it. The propagation stopping rule was chosen on
half A (see :mod:`radvlsm.propagation`), so the table gives A and B apart.

Results per patient go to ``--work`` (default ``benchmarks/results/volume``), written after each step: a rerun
resumes; ``--remeasure`` measures every patient again with the fine-tuned models already there (after a change of
the served code; the timing rows are kept); ``--timing-only`` times again and prints only that (after a change of
the encoder runtime); ``--report`` prints the table from what is there.

``--strides 1 2 3`` measures the coarse-to-fine scan (the ``slice_stride`` request parameter,
:func:`radvlsm.volume_pipeline.scan_order`) with the shipped models on every patient: per stride, the text 3D Dice,
tumour-free slices left empty, tumour slices found and the share of slices run (what the scan saves in encodes);
``--timing-only --stride N`` times the text pipeline with that stride.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import dice, stack_for  # noqa: E402
from benchmarks.datasets import DATA  # noqa: E402
from radvlsm.defaults import DEFAULT_SLICE_STRIDE  # noqa: E402
from radvlsm.geometry import Prompts, mask_to_box  # noqa: E402
from radvlsm.io import Image2D  # noqa: E402
from radvlsm.pipeline import PipelineOptions  # noqa: E402
from radvlsm.propagation import propagate  # noqa: E402
from radvlsm.training import TrainConfig, TrainSample, fine_tune  # noqa: E402
from radvlsm.training.data import volume_samples  # noqa: E402
from radvlsm.volume import load_input, load_volume_label  # noqa: E402
from radvlsm.volume_pipeline import VolumeTextConfig, text_on_volume  # noqa: E402

LGG = DATA / "lgg-mri"
DISK_CACHE = "~/.cache/radvlsm/embeddings"
PHRASES = ("lesion", "brain tumour")
TRAIN_PHRASE = "lesion"  # what the server trains with (its default text)


def patients(limit: int | None = None) -> list[str]:
    names = sorted(p.name for p in LGG.iterdir() if (p / "flair.nii.gz").exists())
    return names[:limit] if limit else names


def halves(names: list[str]) -> dict[str, list[str]]:
    half = (len(names) + 1) // 2
    return {"A": names[:half], "B": names[half:]}


def load(name: str):
    volume = load_input(LGG / name / "flair.nii.gz")
    return volume, load_volume_label(LGG / name / "mask.nii.gz", volume) > 0


def on(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape[0], -1).any(1)


def box_prompt(mask2d: np.ndarray) -> Prompts:
    return Prompts(np.array([mask_to_box(mask2d)], np.float32), np.zeros((0, 2), np.float32), np.zeros(0, int))


class Models:
    """A predictor, the decoder and proposer it serves (shipped, or published into ``work`` by a fine-tune)."""

    def __init__(self, work: Path | None, disk_cache: str | None = DISK_CACHE):
        stack = stack_for(runtime="auto", disk_cache=disk_cache, trained_dir=str(work) if work is not None else None)
        self.predictor, self.proposer, self.pipeline = stack.predictor, stack.text_proposer, stack.pipeline
        self.decoders, self.proposers = stack.decoder_store, stack.proposer_store


def measure(models: Models, name: str) -> dict:
    """Every figure of one patient under ``models``."""
    volume, ref = load(name)
    pred, tumour = models.predictor, on(ref)
    per_slice = []
    for z in np.nonzero(tumour)[0]:
        seg = pred.segment(volume.slice_image(int(z)), box_prompt(ref[z]))
        per_slice.append(dice(seg.lesions[0].mask, ref[z]))
    k = int(np.argmax(ref.reshape(len(ref), -1).sum(1)))
    seg = pred.segment(volume.slice_image(k), box_prompt(ref[k]))
    prop = propagate(pred, volume, k, seg.lesions[0].mask, seg.lesions[0].score)
    out3d = np.zeros(ref.shape, bool)
    for z, m in prop.masks.items():
        out3d[z] = m
    row = {"patient": name, "slices": int(len(ref)), "tumour_slices": int(tumour.sum()),
           "box_slice_dice": round(float(np.mean(per_slice)), 4), "box_slice_n": len(per_slice),
           "propagated_dice": round(dice(out3d, ref), 4), "propagated_slices": prop.slices[:1] + prop.slices[-1:],
           "stopped": prop.stopped}
    for phrase in PHRASES:
        row[phrase] = text_figures(text_on_volume(models.pipeline, volume, PipelineOptions(text=phrase,
                                                                                           diagnose=False)), ref)
    return row


def text_figures(res, ref: np.ndarray) -> dict:
    """A text result against the reference: 3D Dice, tumour-free slices left empty, tumour slices found."""
    got, tumour = res.label > 0, on(ref)
    found = on(got)
    return {"dice": round(dice(got, ref), 4), "found": bool(res.result["found"]),
            "empty_left_empty": round(float((~found[~tumour]).mean()), 4) if (~tumour).any() else None,
            "tumour_found": round(float(found[tumour].mean()), 4),
            "presence_accuracy": round(float((found == tumour).mean()), 4)}


def stride_scan(models: Models, name: str, strides: list[int]) -> dict:
    """The text path with each coarse-to-fine stride (the embeddings cached after the first)."""
    volume, ref = load(name)
    out = {}
    for phrase in PHRASES:
        out[phrase] = {}
        for stride in strides:
            res = text_on_volume(models.pipeline, volume, PipelineOptions(text=phrase, diagnose=False),
                                 config=VolumeTextConfig(stride=stride))
            out[phrase][str(stride)] = {**text_figures(res, ref), "slices_run": res.result["slices_run"],
                                        "slices": volume.n_slices}
    return out


def timing(name: str, stride: int = DEFAULT_SLICE_STRIDE) -> dict:
    """Seconds per volume from a fresh cache: the text pipeline, then a propagation (on a second fresh cache)."""
    volume, ref = load(name)
    out = {"patient": name, "slices": volume.n_slices, "stride": stride}
    models = Models(None, disk_cache=None)
    t = time.perf_counter()
    first = volume.slice_image(0)  # a warm server: its first encode (the runtime compiles or loads) done apart
    models.predictor.encode(Image2D(np.zeros_like(first.pixels)))
    out["warmup_s"] = round(time.perf_counter() - t, 2)
    models.predictor.cache.clear()
    t = time.perf_counter()
    res = text_on_volume(models.pipeline, volume, PipelineOptions(diagnose=False), config=VolumeTextConfig(stride))
    out["text_s"] = round(time.perf_counter() - t, 2)
    out["text_slices_run"] = res.result["slices_run"]
    out["text_stages_s"] = {k.removesuffix("_sum"): round(v / 1e3, 2) for k, v in res.result["latencies_ms"].items()
                            if k.endswith("_sum")}
    models.predictor.cache.clear()
    k = int(np.argmax(ref.reshape(len(ref), -1).sum(1)))
    t = time.perf_counter()
    seg = models.predictor.segment(volume.slice_image(k), box_prompt(ref[k]))
    prop = propagate(models.predictor, volume, k, seg.lesions[0].mask, seg.lesions[0].score)
    out["propagation_s"] = round(time.perf_counter() - t, 2)
    out["propagated_slices"] = len(prop.slices)
    return out


def load_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def adapt(work: Path, train: list[str], options: dict) -> dict:
    """:func:`fine_tune` on ``train``'s reference masks into ``work`` (skipped when it already ran)."""
    done = work / "fine_tune.json"
    if done.exists():
        return json.loads(done.read_text())
    models = Models(work)
    samples = []
    for name in train:
        samples += volume_samples(TrainSample(name, str(LGG / name / "flair.nii.gz"), str(LGG / name / "mask.nii.gz")))
    t = time.time()
    res = fine_tune(models.predictor, samples, models.decoders, TrainConfig.from_request(options),
                    proposer=models.proposer, proposer_store=models.proposers, text=TRAIN_PHRASE)
    out = {"train": train, "samples": len(samples), "seconds": round(time.time() - t, 1),
           "decoder": {"published": res.published, "val_before": res.dice_before, "val_after": res.dice_after},
           "proposer": res.proposer and {k: res.proposer[k] for k in ("published", "match_threshold", "gate",
                                                                       "reason")}}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out, indent=1))
    return out


def mean(rows: list[dict], key, sub: str | None = None) -> str:
    vals = [(r[key][sub] if sub else r[key]) for r in rows]
    vals = [v for v in vals if v is not None]
    return f"{np.mean(vals):.3f}" if vals else "-"


def report(state: dict, names: list[str], options: dict) -> None:
    groups = halves(names)
    if not (state.get("shipped") or state.get("adapted")):
        report_rest(state)
        return
    print(f"lgg-mri: {len(names)} patients (A = {', '.join(groups['A'])}; B = the others); encoder runtime auto; "
          f"site-adapted = fine_tune on the other half, options {json.dumps(options)}\n")
    print("| models | half | patients | box per slice Dice | one box propagated 3D Dice | "
          + " | ".join(f"text '{p}' 3D Dice | '{p}' tumour-free slices left empty | '{p}' tumour slices found | "
                       f"'{p}' slice-presence accuracy" for p in PHRASES) + " |")
    print("|---" * (4 + 4 * len(PHRASES) + 1) + "|")
    for variant in ("shipped", "adapted"):
        for half in ("A", "B", "all"):
            chosen = names if half == "all" else groups[half]
            rows = [state[variant][n] for n in chosen if n in state.get(variant, {})]
            if not rows:
                continue
            cells = [variant, half, str(len(rows)), mean(rows, "box_slice_dice"), mean(rows, "propagated_dice")]
            for p in PHRASES:
                cells += [mean(rows, p, "dice"), mean(rows, p, "empty_left_empty"), mean(rows, p, "tumour_found"),
                          mean(rows, p, "presence_accuracy")]
            print("| " + " | ".join(cells) + " |")
    for half, fit in state.get("fits", {}).items():
        print(f"\nsite-adapted models measured on half {half}: trained on {len(fit['train'])} patients "
              f"({fit['samples']} slices) in {fit['seconds']:.0f} s; decoder {fit['decoder']}; proposer "
              f"{fit['proposer']}")
    report_rest(state)


def report_rest(state: dict) -> None:
    """The coarse-to-fine scan's and the timing's tables."""
    if state.get("strides"):
        print("\nCoarse-to-fine scan (shipped models, every patient): per stride, text 3D Dice / tumour-free slices "
              "left empty / tumour slices found / slices run\n")
        strides = sorted({int(k) for r in state["strides"].values() for k in r[PHRASES[0]]})
        print("| phrase | " + " | ".join(f"stride {k}" for k in strides) + " |\n|---" * 1 + "|---" * len(strides) + "|")
        for p in PHRASES:
            cells = []
            for k in strides:
                rows = [r[p][str(k)] for r in state["strides"].values() if str(k) in r[p]]
                run = sum(r["slices_run"] for r in rows) / max(sum(r["slices"] for r in rows), 1)
                cells.append(f"{mean(rows, 'dice')} / {mean(rows, 'empty_left_empty')} / "
                             f"{mean(rows, 'tumour_found')} / {run:.1%} ({len(rows)} patients)")
            print(f"| {p} | " + " | ".join(cells) + " |")
    if state.get("timing"):
        print("\n| patient | slices | text s | text s / 30 slices | propagation s (slices reached) | "
              "propagation s / 30 slices reached | warm-up s |\n|---|---|---|---|---|---|---|")
        for r in state["timing"].values():  # rows timed before session 14 include the warm-up in text s
            stride = f" (stride {r['stride']}: {r['text_slices_run']} run)" if r.get("stride", 1) > 1 else ""
            print(f"| {r['patient']} | {r['slices']} | {r['text_s']}{stride} | {30 * r['text_s'] / r['slices']:.1f} | "
                  f"{r['propagation_s']} ({r['propagated_slices']}) | "
                  f"{30 * r['propagation_s'] / r['propagated_slices']:.1f} | {r.get('warmup_s', 'in text s')} |")
        staged = [r for r in state["timing"].values() if r.get("text_stages_s")]
        if staged:  # the text pipeline's stages summed over the slices (timings before session 14 lack them)
            print("\n| patient | text s by stage, summed over slices |\n|---|---|")
            for r in staged:
                print(f"| {r['patient']} | " + ", ".join(f"{k} {v}" for k, v in r["text_stages_s"].items()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N patients only")
    ap.add_argument("--options", default='{"proposer_scope": "heads"}', help="fine_tune options (JSON)")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "volume"))
    ap.add_argument("--timing", type=int, default=3, help="patients timed from a fresh cache")
    ap.add_argument("--remeasure", action="store_true", help="measure again, keeping the fine-tunes and timing")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time --timing patients again (after a change of the encoder runtime) and print them")
    ap.add_argument("--stride", type=int, default=DEFAULT_SLICE_STRIDE,
                    help="slice_stride of the timed text pipeline (default: the served one)")
    ap.add_argument("--strides", type=int, nargs="+", help="only measure the coarse-to-fine scan with these strides")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    options = json.loads(args.options)
    work = Path(args.work)
    path = work / "state.json"
    state = load_state(path)
    if args.remeasure:
        state.pop("shipped", None)
        state.pop("adapted", None)
    names = patients(args.limit)
    if args.timing_only:
        state["timing"] = {name: timing(name, args.stride) for name in names[: args.timing]}
        save_state(path, state)
        report({"timing": state["timing"]}, names, options)
        return
    if args.strides:
        state.setdefault("strides", {})
        shipped = Models(None)
        for name in names:
            done = state["strides"].get(name, {}).get(PHRASES[0], {})
            if not all(str(k) in done for k in args.strides):
                state["strides"][name] = stride_scan(shipped, name, sorted(set(args.strides)))
                save_state(path, state)
                print(name, "strides", state["strides"][name], file=sys.stderr, flush=True)
        report({"strides": state["strides"]}, names, options)
        return
    if not args.report:
        state.setdefault("shipped", {})
        shipped = Models(None)
        for name in names:
            if name not in state["shipped"]:
                state["shipped"][name] = measure(shipped, name)
                save_state(path, state)
                print(name, "shipped", state["shipped"][name], file=sys.stderr, flush=True)
        del shipped
        groups = halves(names)
        state.setdefault("adapted", {})
        state.setdefault("fits", {})
        for half, other in (("A", "B"), ("B", "A")):
            if all(n in state["adapted"] for n in groups[half]):
                continue
            fit_dir = work / f"adapted-on-{other}"
            state["fits"][half] = adapt(fit_dir, groups[other], options)
            save_state(path, state)
            models = Models(fit_dir)
            for name in groups[half]:
                if name not in state["adapted"]:
                    state["adapted"][name] = measure(models, name)
                    save_state(path, state)
                    print(name, "adapted", state["adapted"][name], file=sys.stderr, flush=True)
        state.setdefault("timing", {})
        for name in names[: args.timing]:
            if name not in state["timing"]:
                state["timing"][name] = timing(name)
                save_state(path, state)
    report(state, names, options)


if __name__ == "__main__":
    main()
