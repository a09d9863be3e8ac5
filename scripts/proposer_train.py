"""Train ``qformer_lite`` from a pack made by ``proposer_pack.py`` (GPU if there is one; CPU works, slowly).

The frozen LiteMedSAM encoder embeds every packed image (and its mirror image, for augmentation) once; the
Q-Former then trains on those embeddings. A seeded 8 % of the packed training images is held back to choose the
ranking rule and the match threshold (BUS-BRA fold 5 and Kvasir validation are never seen here).

    python scripts/proposer_train.py --pack .carry/proposer --out model/qformer_lite [--epochs 40] [--device cuda]
    # the cross-site recipe on a CPU (model/qformer_lite_xsite/README.md): fine-tune the shipped weights on scanner-
    # augmented packs, embedded by the server's own encoder runtime
    python scripts/proposer_train.py --pack .carry/xsite --out OUT --epochs 3 --batch 32 --lr 1e-4 \
        --runtime onnx --no-mirror --init model/qformer_lite/qformer_lite.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # the pack's own encoder needs only lib/; --runtime imports radvlsm

from radvlsm.proposals.phrases import DEFAULT_PHRASE, PhraseSet, sample_pair  # noqa: E402
from radvlsm.proposals.qformer_model import (  # noqa: E402
    QFormerLite,
    QFormerLiteConfig,
    cxcywh_to_xyxy,
    losses,
    valid_grid,
)

DOMAIN_IDS = {"breast": 0, "polyp": 1, "thyroid": 2, "normal": -1}
WRONG_PHRASE = {"breast": "colon polyp", "polyp": "breast lesion", "thyroid": "colon polyp"}


def build_encoder(pack: Path, device: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("tiny_vit_sam", pack / "tiny_vit_sam.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    enc = mod.TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                      num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                      drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                      layer_lr_decay=0.8)
    state = torch.load(pack / "encoder_fp16.pt", map_location="cpu", weights_only=True)
    enc.load_state_dict({k: v.float() for k, v in state.items()})
    return enc.to(device).eval()


def encoder_input(small: np.ndarray, flip: bool) -> torch.Tensor:
    """As ``radvlsm.predictor.preprocess`` after its resize: min-max to [0, 1], 3 channels, zero pad to 256."""
    x = torch.from_numpy(small).float()
    x = x[..., None] if x.ndim == 2 else x
    x = x.permute(2, 0, 1)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    if flip:
        x = x.flip(-1)
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    return F.pad(x, (0, 256 - x.shape[2], 0, 256 - x.shape[1]))


@torch.inference_mode()
def embed_all(images: list[np.ndarray], encoder, device: str, batch: int = 64) -> torch.Tensor:
    """(N, 2, 256, 64, 64) fp16: each image and its mirror."""
    out = []
    for flip in (False, True):
        embs = []
        for i in range(0, len(images), batch):
            x = torch.stack([encoder_input(im, flip) for im in images[i: i + batch]]).to(device)
            embs.append(encoder(x).half())
        out.append(torch.cat(embs))
    return torch.stack(out, 1)


def embed_resumable(images: list[np.ndarray], pack: Path, runtime: str, mirror: bool) -> torch.Tensor:
    """(N, V, 256, 64, 64) fp16 through the project's own encoder runtime (``onnx`` on a CPU: what the server
    serves), written to ``pack/embeddings-<runtime>.npy`` as it goes, so an interrupted run resumes. The progress
    file names the pack it belongs to (size and mtime of pack.npz): a re-made pack is embedded afresh."""
    from radvlsm.models import build_backbone
    from radvlsm.runtimes import build_runtime

    views = 2 if mirror else 1
    path, done_path = pack / f"embeddings-{runtime}-v{views}.npy", pack / f"embeddings-{runtime}-v{views}.done"
    shape = (len(images), views, 256, 64, 64)
    stat = (pack / "pack.npz").stat()
    stamp = f"{stat.st_size}-{stat.st_mtime_ns}"
    old = done_path.read_text().split() if done_path.exists() else []
    resume = path.exists() and len(old) == 2 and old[0] == stamp
    arr = np.lib.format.open_memmap(path, mode="r+" if resume else "w+", dtype=np.float16, shape=shape)
    done = int(old[1]) if resume and arr.shape == shape else 0
    if done < len(images):
        enc = build_runtime(runtime, build_backbone("litemedsam", device="cpu"))
        t0 = time.time()
        for i in range(done, len(images)):
            for v in range(views):
                arr[i, v] = enc.encode(encoder_input(images[i], bool(v))[None]).cpu().numpy().astype(np.float16)
            if (i + 1) % 50 == 0 or i + 1 == len(images):
                arr.flush()
                done_path.write_text(f"{stamp} {i + 1}")
                print(f"embedded {i + 1}/{len(images)} ({time.time() - t0:.0f}s)", flush=True)
    return torch.from_numpy(np.array(np.load(path, mmap_mode="r")))


def source_id(record_id: str) -> str:
    return record_id.split("-aug")[0].removesuffix("-normal")


def load_packs(args) -> tuple[list[dict], torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Records, soft masks, boxes and embeddings of every ``--pack`` (concatenated), and their text features
    merged by phrase: a later pack (e.g. a new site's) adds to the first without re-embedding it."""
    records, masks, boxes, embs = [], [], [], []
    text = {"phrases": [], "tokens": [], "masks": [], "sentences": []}
    for pack_dir in args.pack:
        pack = np.load(pack_dir / "pack.npz")
        recs = json.loads((pack_dir / "records.json").read_text())[: args.limit]
        raw, offs = pack["jpeg"].tobytes(), pack["offsets"]
        images = [np.array(Image.open(io.BytesIO(raw[offs[i]: offs[i + 1]]))) for i in range(len(recs))]
        if args.runtime:
            e = embed_resumable(images, pack_dir, args.runtime, not args.no_mirror)
        else:
            e = embed_all(images, build_encoder(pack_dir, args.device), args.device)
            e = e[:, :1] if args.no_mirror else e
        records += recs
        masks.append(torch.from_numpy(pack["masks"][: len(recs)]).float() / 255)
        boxes.append(torch.from_numpy(pack["boxes"][: len(recs)]))
        embs.append(e)
        t = torch.load(pack_dir / "text.pt", weights_only=True)
        known = set(text["phrases"])
        for j, phrase in enumerate(t["phrases"]):
            if phrase not in known:
                text["phrases"].append(phrase)
                text["tokens"].append(t["tokens"][j])
                text["masks"].append(t["masks"][j])
                text["sentences"].append(t["sentences"][j])
    text["sentences"] = torch.stack(text["sentences"])
    return records, torch.cat(masks), torch.cat(boxes), torch.cat(embs), text


def flip_grid(m: torch.Tensor, cols: int) -> torch.Tensor:
    out = m.clone()
    out[..., :cols] = m[..., :cols].flip(-1)
    return out


def box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x0, y0 = torch.max(a[:, 0], b[:, 0]), torch.max(a[:, 1], b[:, 1])
    x1, y1 = torch.min(a[:, 2], b[:, 2]), torch.min(a[:, 3], b[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def heat_top_box(heat: torch.Tensor, rows: int, cols: int, threshold: float = 0.5) -> np.ndarray | None:
    """As at inference: the 64x64 relevance map upsampled to the 256 frame, cropped to the image, thresholded;
    the box (fractions, continuous edges) of the component with the highest peak."""
    from scipy import ndimage

    g = F.interpolate(heat[None, None].float(), (256, 256), mode="bilinear", align_corners=False)[0, 0]
    g = g[:rows, :cols].cpu().numpy()
    lab, n = ndimage.label(g >= threshold)
    if n == 0:
        return None
    peaks = ndimage.maximum(g, lab, range(1, n + 1))
    sl = ndimage.find_objects(lab)[int(np.argmax(peaks))]
    return np.array([sl[1].start / cols, sl[0].start / rows, sl[1].stop / cols, sl[0].stop / rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, nargs="+", required=True, help="one or more packs (trained together)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=100, help="0 with --init: only recalibrate its thresholds")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--init", type=Path, default=None, help="start from this checkpoint (fine-tune)")
    ap.add_argument("--runtime", default=None,
                    help="embed with the project's encoder runtime (e.g. onnx on a CPU), resumable in the pack dir")
    ap.add_argument("--no-mirror", action="store_true", help="one view per image (the pack holds flipped copies)")
    ap.add_argument("--context", type=int, default=0, metavar="CHANNELS",
                    help="add the relevance map's context head with this many channels (0: linear map only)")
    ap.add_argument("--freeze-qformer", action="store_true",
                    help="train the heads only (the Q-Former and projections stay as --init left them)")
    ap.add_argument("--recall", type=float, default=None,
                    help="presence calibration, sensitivity first: the match threshold keeps this share of the "
                         "held-back lesion images and the mismatch floor is the same quantile of wrong-domain "
                         "matches (default: halfway between the classes, floor at the highest wrong match)")
    args = ap.parse_args()
    if args.recall is not None and not 0.5 <= args.recall < 1:
        ap.error("--recall: a share between 0.5 and 1, e.g. 0.95")
    if args.epochs == 0 and args.init is None:
        ap.error("--epochs 0 only recalibrates a checkpoint: give it with --init")
    if args.freeze_qformer and args.init is None:
        ap.error("--freeze-qformer trains heads over a trained Q-Former: give it with --init")
    torch.manual_seed(0)
    rng = random.Random(0)
    t0 = time.time()
    records, masks, boxes, embeddings, text = load_packs(args)
    views = embeddings.shape[1]
    phrase_index = {p: i for i, p in enumerate(text["phrases"])}
    print(f"embedded {len(records)} images x{views} in {time.time() - t0:.0f}s on {args.device}", flush=True)
    valid = torch.stack([valid_grid(tuple(r["size"])) for r in records])
    # held back by source image: an image's augmented copies and lesion-free crops stay on its side
    groups = sorted({source_id(r["id"]) for r in records})
    rng.shuffle(groups)
    val_groups = set(groups[: max(2, int(0.08 * len(groups)))])
    val_ids = [i for i, r in enumerate(records) if source_id(r["id"]) in val_groups]
    train_ids = [i for i, r in enumerate(records) if source_id(r["id"]) not in val_groups]
    sets = [PhraseSet(r["positives"], r["negatives"]) for r in records]

    cfg = QFormerLiteConfig(context_channels=args.context)
    if args.init is not None:
        init = torch.load(args.init, map_location="cpu", weights_only=True)
        cfg = QFormerLiteConfig(**{**init["config"], **({"context_channels": args.context} if args.context else {})})
    model = QFormerLite(cfg).to(args.device)
    if args.init is not None:
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in init["state_dict"].items()},
                                                    strict=False)
        if unexpected or any(not k.startswith("context.") for k in missing):
            raise SystemExit(f"{args.init} does not fit this architecture: missing {missing}, unexpected {unexpected}")
        print(f"fine-tuning from {args.init}" + (" (new context head)" if missing else ""), flush=True)
    frozen = {"image_proj", "pos", "text_proj", "queries", "token_type", "qformer"} if args.freeze_qformer else set()
    for n, p in model.named_parameters():
        p.requires_grad_(n.split(".")[0] not in frozen)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(train_ids) / args.batch)
    if args.epochs > 0:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.05)

    def make_batch(idx: list[int], train: bool, phrase: str | None = None) -> dict[str, torch.Tensor]:
        emb, mk, bx, vd, toks, tmask, sent, match, dom = [], [], [], [], [], [], [], [], []
        for i in idx:
            r = records[i]
            flip = train and views > 1 and rng.random() < 0.5
            if phrase is None:
                p, is_match = sample_pair(sets[i], rng)
            else:
                p, is_match = phrase, r["domain"] != "normal"
            j = phrase_index[p]
            cols = math.ceil(r["size"][1] * 64 / 256)
            emb.append(embeddings[i, int(flip)])
            mk.append(flip_grid(masks[i], cols) if flip else masks[i])
            b = boxes[i].clone()
            if flip:
                b[0] = 1 - b[0]
            bx.append(b)
            vd.append(valid[i])
            toks.append(text["tokens"][j].float())
            tmask.append(text["masks"][j])
            sent.append(text["sentences"][j])
            match.append(float(is_match))
            dom.append(DOMAIN_IDS[r["domain"]])
        length = max(t.shape[0] for t in toks)
        tok = torch.zeros(len(idx), length, toks[0].shape[1])
        tm = torch.zeros(len(idx), length, dtype=torch.long)
        for k, (t, m) in enumerate(zip(toks, tmask, strict=True)):
            tok[k, : t.shape[0]], tm[k, : m.shape[0]] = t, m
        d = {"embedding": torch.stack(emb), "mask": torch.stack(mk), "box": torch.stack(bx), "valid": torch.stack(vd),
             "tokens": tok, "token_mask": tm, "sentence": torch.stack(sent), "match": torch.tensor(match),
             "domain": torch.tensor(dom)}
        return {k: v.to(args.device) for k, v in d.items()}

    for epoch in range(args.epochs):
        model.train()
        if args.freeze_qformer:  # frozen parts compute the features inference sees (no dropout)
            for name in frozen:
                module = getattr(model, name)
                if isinstance(module, torch.nn.Module):
                    module.eval()
        rng.shuffle(train_ids)
        totals: dict[str, float] = {}
        for s in range(0, len(train_ids), args.batch):
            b = make_batch(train_ids[s: s + args.batch], train=True)
            with torch.set_grad_enabled(not args.freeze_qformer):
                z = model.encode(b["embedding"], b["valid"], b["tokens"], b["token_mask"])
            out = model.heads(z, b["valid"])
            ls = losses(out, b, model)
            opt.zero_grad()
            ls["total"].backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            sched.step()
            for k, v in ls.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) * len(b["match"])
        if epoch % 5 == 4 or epoch == args.epochs - 1 or args.epochs <= 10:
            losses_text = " ".join(f"{k} {v / len(train_ids):.4f}" for k, v in totals.items())
            print(f"epoch {epoch + 1} ({time.time() - t0:.0f}s): {losses_text}", flush=True)

    # held-back images: match score for the default phrase vs wrong-domain phrases, box quality of both rules
    model.eval()
    metrics: dict[str, float] = {}
    with torch.inference_mode():
        lesion_ids = [i for i in val_ids if records[i]["domain"] != "normal"]
        b = make_batch(lesion_ids, train=False, phrase=DEFAULT_PHRASE)
        out = model(b["embedding"], b["valid"], b["tokens"], b["token_mask"])
        gt = cxcywh_to_xyxy(b["box"])
        head_iou = box_iou_xyxy(cxcywh_to_xyxy(out["box"]), gt)
        heat = out["heat"].sigmoid()
        heat_ious: dict[float, list[float]] = {}
        for t in (0.3, 0.4, 0.5, 0.6):
            heat_ious[t] = []
            for k, i in enumerate(lesion_ids):
                hb = heat_top_box(heat[k], *records[i]["size"], threshold=t)
                iou = 0.0 if hb is None else float(box_iou_xyxy(torch.tensor(hb[None]), gt[k: k + 1].cpu())[0])
                heat_ious[t].append(iou)
        heat_threshold = max(heat_ious, key=lambda t: float(np.mean(np.array(heat_ious[t]) >= 0.5)))
        heat_iou = heat_ious[heat_threshold]
        metrics["heat_threshold"] = heat_threshold
        pos_p = out["itm"].sigmoid().cpu()
        neg_p = []
        for i in lesion_ids:
            bn = make_batch([i], train=False, phrase=WRONG_PHRASE[records[i]["domain"]])
            neg_p.append(float(model(bn["embedding"], bn["valid"], bn["tokens"], bn["token_mask"])["itm"].sigmoid()))
        wrong_p = np.array(neg_p)  # a phrase naming another domain (modality) on a lesion image
        normal_ids = [i for i in val_ids if records[i]["domain"] == "normal"]
        if normal_ids:
            bn = make_batch(normal_ids, train=False, phrase=DEFAULT_PHRASE)
            neg_p += model(bn["embedding"], bn["valid"], bn["tokens"], bn["token_mask"])["itm"].sigmoid().tolist()
        neg_p_t = torch.tensor(neg_p)
        present = [d for d in ("breast", "polyp", "thyroid") if any(records[i]["domain"] == d for i in lesion_ids)]
        for dom in present:
            sel = torch.tensor([records[i]["domain"] == dom for i in lesion_ids])
            metrics[f"{dom}_head_iou50"] = float((head_iou.cpu()[sel] >= 0.5).float().mean())
            metrics[f"{dom}_heat_iou50"] = float((torch.tensor(heat_iou)[sel] >= 0.5).float().mean())
        metrics["match_pos_mean"] = float(pos_p.mean())
        metrics["match_neg_mean"] = float(neg_p_t.mean())
        if args.recall is None:  # threshold halfway between the classes' 5th/95th percentiles, bounded to [0.2, 0.8]
            thr = float(np.clip((np.quantile(pos_p.numpy(), 0.05) + np.quantile(neg_p_t.numpy(), 0.95)) / 2,
                                0.2, 0.8))
        else:  # sensitivity first: the threshold that keeps this share of held-back lesion images
            thr = float(np.clip(np.quantile(pos_p.numpy(), 1 - args.recall), 0.05, 0.8))
        metrics["match_threshold"] = thr
        metrics["pos_above"] = float((pos_p >= thr).float().mean())
        metrics["neg_above"] = float((neg_p_t >= thr).float().mean())
        # the floor below which a phrase is a clear mismatch even when the class-agnostic phrase finds a lesion:
        # the highest wrong-domain match on the held-back lesion images (bounded), see QFormerLiteProposer
        worst = (wrong_p.max() if args.recall is None else np.quantile(wrong_p, args.recall)) if len(wrong_p) else thr
        floor = float(np.clip(worst, 0.005, thr))
        metrics["mismatch_floor"] = floor
        metrics["wrong_phrase_max"] = float(wrong_p.max()) if len(wrong_p) else float("nan")
    head_score = sum(metrics[f"{d}_head_iou50"] for d in present)
    heat_score = sum(metrics[f"{d}_heat_iou50"] for d in present)
    rank = "box_head" if head_score >= heat_score else "heatmap"
    print("held-back:", json.dumps({k: round(v, 4) for k, v in metrics.items()}), "rank:", rank, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "qformer_lite.pt.tmp"
    torch.save({"config": model.cfg.to_dict(), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "rank": rank, "match_threshold": thr, "heat_threshold": heat_threshold,
                "presence_phrase": DEFAULT_PHRASE, "mismatch_floor": floor,
                "default_phrase": DEFAULT_PHRASE, "heldback_metrics": metrics, "epochs": args.epochs,
                "train_images": len(train_ids), "init": str(args.init) if args.init else None}, tmp)
    tmp.replace(args.out / "qformer_lite.pt")
    (args.out / "train_log.json").write_text(json.dumps({"metrics": metrics, "rank": rank, "args": {
        k: str(v) for k, v in vars(args).items()}, "seconds": time.time() - t0}, indent=2))
    print(f"saved {args.out / 'qformer_lite.pt'} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
