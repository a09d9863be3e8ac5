"""The ``radvlsm segment`` command: mask, JSON and overlay on disk; clear errors and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radvlsm import cli
from radvlsm.cli import main
from tests.conftest import ROOT, SAMPLES, dice, reference

XSITE = ROOT / "model" / "qformer_lite_xsite" / "qformer_lite.pt"


def test_segment_writes_mask_json_overlay(tmp_path, capsys):
    case = "bus_0584-l"
    assert main(["segment", str(SAMPLES / "images" / f"{case}.png"), "--text", "breast lesion",
                 "--out", str(tmp_path)]) == 0
    mask = np.array(Image.open(tmp_path / f"{case}_mask.png"))
    assert dice(mask > 0, reference(case)) >= 0.7
    result = json.loads((tmp_path / f"{case}.json").read_text())
    assert result["found"] and result["lesions"][0]["diagnosis"]["status"] == "ok"
    overlay = np.array(Image.open(tmp_path / f"{case}_overlay.png"))
    assert overlay.shape == mask.shape + (3,)
    assert "lesion 1" in capsys.readouterr().out


@pytest.mark.parametrize("follow", ["--trained-dir", "--studies"])
def test_segment_follows_the_published_decoder(tmp_path, follow):
    """``--trained-dir DIR`` (or ``--studies DIR``, whose trained dir the app uses) serves the decoder version the
    radvlsm train task published there, and the JSON says which."""
    from radvlsm.models import build_backbone
    from radvlsm.versions import decoder_state, decoder_store, default_trained_dir

    studies = tmp_path / "studies"
    studies.mkdir()
    trained = tmp_path / "trained" if follow == "--trained-dir" else Path(default_trained_dir(str(studies), ""))
    backbone = build_backbone("litemedsam")
    state = decoder_state(backbone)
    key = "mask_decoder.iou_token.weight"
    state[key] = state[key] + 1e-4  # slightly another decoder: the shipped one is not what is served
    version = decoder_store(trained, "litemedsam").publish(state, "litemedsam", backbone.version, {"note": "cli"})
    case = "bus_0584-l"
    out = tmp_path / "out"
    assert main(["segment", str(SAMPLES / "images" / f"{case}.png"), "--text", "breast lesion", "--out", str(out),
                 "--no-diagnose", follow, str(trained if follow == "--trained-dir" else studies)]) == 0
    result = json.loads((out / f"{case}.json").read_text())
    assert version == "v0001" and result["decoder_version"] == version
    assert dice(np.array(Image.open(out / f"{case}_mask.png")) > 0, reference(case)) >= 0.7


def test_bad_inputs_exit_non_zero_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["segment", str(bad), "--out", str(tmp_path / "out"), "--no-diagnose"])
    assert code == 2 and "not a readable image" in capsys.readouterr().err
    code = main(["segment", str(SAMPLES / "images" / "bus_0584-l.png"), "--box", "50", "50", "10", "60",
                 "--out", str(tmp_path / "out"), "--no-diagnose"])
    assert code == 2 and "inverted" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*"))


def test_a_missing_or_corrupt_ranker_file_is_named_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "ranker.json"
    bad.write_text("{truncated")
    for ranker in (str(bad), str(tmp_path / "missing.json")):
        code = main(["segment", str(SAMPLES / "images" / "bus_0584-l.png"), "--out", str(tmp_path / "out"),
                     "--no-diagnose", "--qformer-checkpoint", str(XSITE), "--mask-ranker", ranker])
        err = capsys.readouterr().err
        assert code == 2 and Path(ranker).name in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_segment_prints_only_the_answer(tmp_path):
    """As a user runs it (a fresh process, default warning filters, progress bars on): stdout is the summary line,
    stderr has no deprecation warnings and no weight-loading progress bar."""
    case = "bus_0370-r"
    image = str(SAMPLES / "images" / f"{case}.png")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")}
    proc = subprocess.run([sys.executable, "-m", "radvlsm.cli", "segment", image, "--text", "breast lesion",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for marker in ("FutureWarning", "DeprecationWarning", "UserWarning", "Loading weights", "it/s", "\r", "\u2588"):
        assert marker not in proc.stderr, f"{marker!r} on stderr:\n{proc.stderr}"
    result = json.loads((tmp_path / f"{case}.json").read_text())
    summary = "; ".join(f"lesion {x['label']}: {x['area_px']} px, {x['diagnosis']['summary']}"
                        for x in result["lesions"])
    assert result["lesions"] and proc.stdout == f"{image}: {summary}\n"


@pytest.mark.parametrize("argv", [["-v", "segment", "x.png", "--out", "o"], ["segment", "x.png", "--out", "o", "-v"],
                                  ["segment", "x.png", "--out", "o", "--verbose"], ["segment", "x.png", "--out", "o"]])
def test_verbose_flag_before_or_after_the_command(monkeypatch, argv):
    seen = {}
    monkeypatch.setattr(cli, "show_log", lambda: seen.setdefault("log", True))
    monkeypatch.setattr(cli, "cmd_segment", lambda args: seen.setdefault("verbose", args.verbose) and 0)
    main(argv)
    verbose = "-v" in argv or "--verbose" in argv
    assert seen == ({"log": True, "verbose": True} if verbose else {"verbose": False})
