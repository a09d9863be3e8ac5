"""The ``radvlsm segment`` command: mask, JSON and overlay on disk; clear errors and a non-zero exit."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from radvlsm.cli import main
from tests.conftest import SAMPLES, dice, reference


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


def test_bad_inputs_exit_non_zero_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["segment", str(bad), "--out", str(tmp_path / "out"), "--no-diagnose"])
    assert code == 2 and "not a readable image" in capsys.readouterr().err
    code = main(["segment", str(SAMPLES / "images" / "bus_0584-l.png"), "--box", "50", "50", "10", "60",
                 "--out", str(tmp_path / "out"), "--no-diagnose"])
    assert code == 2 and "inverted" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*"))
