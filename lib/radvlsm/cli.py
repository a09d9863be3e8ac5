"""``radvlsm`` command line: the pipeline without a server, for people who want to look at the result.

    radvlsm segment IMAGE [IMAGE ...] --text "breast lesion" --out DIR [--no-diagnose] [--box x0 y0 x1 y1] [-v]
                    [--studies DIR | --trained-dir DIR]

Writes, per image, ``<stem>_mask.png`` (lesion i = i+1), ``<stem>.json`` and ``<stem>_overlay.png`` (lesion
outline, box and diagnosis), and prints one summary line per image on stdout. Bad input is a message on stderr and
exit status 2; nothing half-written is left. Nothing else is printed unless ``-v``/``--verbose`` asks for the
log (radvlsm's INFO and up, other libraries' WARNING and up, on stderr) and the weight-loading progress bars.

With ``--studies``/``--trained-dir`` it serves the versions ``/train/radvlsm`` and ``/train/diagnosis`` published
(``decoder_version`` and ``proposer_version`` in the JSON say which), as the app does: the stack is the app's
(:mod:`radvlsm.stack`), with the eager encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.errors import RadVLSMError
from radvlsm.stack import Settings, Stack
from radvlsm.versions.locations import default_trained_dir

#: the MONAI Label app, whose ``model/trained`` holds the versions trained on a remote (DICOMweb) datastore
APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "radvlsm"
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0)]


def overlay(rgb: np.ndarray, label: np.ndarray, result: dict) -> np.ndarray:
    """Lesion outlines, their boxes and a one-line diagnosis per lesion drawn on the image."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    out = rgb.copy()
    for i in range(1, int(label.max()) + 1):
        m = label == i
        edge = m & ~ndimage.binary_erosion(m)
        out[ndimage.binary_dilation(edge)] = COLOURS[(i - 1) % len(COLOURS)]
    im = Image.fromarray(out)
    draw = ImageDraw.Draw(im)
    for i, lesion in enumerate(result.get("lesions", [])):
        colour = COLOURS[i % len(COLOURS)]
        x0, y0, x1, y1 = lesion["box"]
        draw.rectangle([x0, y0, x1, y1], outline=colour)
        dx = lesion.get("diagnosis", {})
        text = f"{i + 1}"
        if dx.get("status") == "ok":
            text += f": {dx['label']} p={dx['probability']:.2f}"
        draw.text((x0 + 2, max(0, y0 - 12)), text, fill=colour)
    if not result.get("found", True):
        draw.text((4, 4), "no lesion found", fill=(255, 255, 0))
    return np.array(im)


@contextmanager
def quiet_progress_bars(quiet: bool = True) -> Iterator[None]:
    """No progress bars while the models load (transformers draws one on stderr for the text encoder's weights);
    the previous setting is restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # nothing draws a bar then
        hf_logging = None
    if not quiet or hf_logging is None or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def cmd_segment(args: argparse.Namespace) -> int:
    from radvlsm.errors import CheckpointError

    with quiet_progress_bars(not getattr(args, "verbose", False)):
        try:
            return _segment(args)
        except CheckpointError as exc:  # a missing or corrupt weights/ranker file: say which, no traceback
            print(f"radvlsm: {exc}", file=sys.stderr)
            return 2


def settings_of(args: argparse.Namespace) -> Settings:
    """The stack the command runs: the eager encoder (no export, no warm-up: one run, a few images) and, with
    ``--trained-dir`` (or ``--studies``, whose trained dir the app uses: ``<studies>/.radvlsm/trained``), the
    decoder, proposer and diagnosis head versions published there, as the app serves them."""
    trained_dir = args.trained_dir or (default_trained_dir(args.studies, str(APP_DIR)) if args.studies else None)
    return Settings(backbone=args.backbone, checkpoint=args.checkpoint, device=args.device, runtime="eager",
                    trained_dir=trained_dir, qformer_checkpoint=args.qformer_checkpoint,
                    diagnosis_dir=args.diagnosis_dir, text=args.text, diagnose=not args.no_diagnose, warm_up=False,
                    mask_ranker=args.mask_ranker)


def _segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from radvlsm.geometry import Prompts, validate_boxes
    from radvlsm.io import atomic_write, load_image, save_mask
    from radvlsm.pipeline import PipelineOptions

    stack = Stack(settings_of(args))
    pipeline = stack.pipeline
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
            prompts = None
            if args.box:
                boxes = validate_boxes([args.box], image.shape, "--box")
                prompts = Prompts(boxes, np.zeros((0, 2), np.float32), np.zeros(0, int))
            res = pipeline.run(image, PipelineOptions(text=args.text, diagnose=not args.no_diagnose), prompts)
        except RadVLSMError as exc:
            print(f"radvlsm: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        res.result.setdefault("decoder_version", pipeline.predictor.decoder_version)  # as the app's tasks say
        stem = Path(path).name.split(".")[0]
        save_mask(res.label, out / f"{stem}_mask.png", like=image)
        atomic_write(out / f"{stem}.json", lambda p, r=res: Path(p).write_text(json.dumps(r.result, indent=2)))
        vis = overlay(image.rgb_uint8(), res.label, res.result)
        atomic_write(out / f"{stem}_overlay.png", lambda p, v=vis: Image.fromarray(v).save(p, format="PNG"))
        lesions = res.result["lesions"]
        summary = "; ".join(
            f"lesion {x['label']}: {x['area_px']} px" + (f", {x['diagnosis']['summary']}" if "diagnosis" in x else "")
            for x in lesions) or res.result.get("message", "")
        print(f"{path}: {summary}")
    return 2 if failures else 0


def show_log() -> None:
    """``--verbose``: radvlsm's own INFO and up (runtime choice, exports, timings), other libraries' WARNING and up,
    on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.partition(".")[0] == "radvlsm")
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("radvlsm").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    # -v before or after the command; SUPPRESS so the subcommand's absent flag does not reset the top-level one
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the log (radvlsm's INFO and up) and progress bars on stderr")
    ap = argparse.ArgumentParser(prog="radvlsm", description="Text-guided lesion segmentation and diagnosis",
                                 parents=[common])
    sub = ap.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="text -> lesion masks (+ diagnosis) for one or more images",
                         parents=[common])
    seg.add_argument("images", nargs="+")
    seg.add_argument("--text", default=DEFAULT_PHRASE, help="the phrase (default: the class-agnostic 'lesion')")
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                     help="use this box instead of the proposals (pixel columns/rows)")
    seg.add_argument("--no-diagnose", action="store_true")
    seg.add_argument("--backbone", default="litemedsam")
    seg.add_argument("--checkpoint", default=None)
    seg.add_argument("--qformer-checkpoint", default=None)
    seg.add_argument("--diagnosis-dir", default=None)
    seg.add_argument("--mask-ranker", default="auto", metavar="auto|off|FILE",
                     help="rank SAM's candidate masks (auto: the shipped ranker over the proposer it was trained with)")
    seg.add_argument("--device", default="cpu")
    seg.add_argument("--studies", default=None, metavar="DIR",
                     help="the app's studies folder: serve the versions trained on its labels "
                          "(<DIR>/.radvlsm/trained, as the app does)")
    seg.add_argument("--trained-dir", default=None, metavar="DIR",
                     help="serve the decoder, proposer and diagnosis head versions published here "
                          "(the app's --conf trained_dir; default: from --studies, else the shipped weights)")
    args = ap.parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    if args.verbose:
        show_log()
    return cmd_segment(args)


if __name__ == "__main__":
    sys.exit(main())
