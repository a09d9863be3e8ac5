"""The mask ranker through a real MONAI Label server on loopback, with the stock ``monailabel.client``: served
over the cross-site proposer it was trained with (``--conf qformer_checkpoint``, ranker ``auto``), the pipeline's
answer says its candidates were ranked and still finds the bundled lesion; a bad ranker file stops start-up with a
message naming it."""

from __future__ import annotations

import pytest
from monailabel.client import MONAILabelClient

from radvlsm.io import load_mask
from tests.conftest import ROOT, dice, reference, start_server, stop_server

XSITE = ROOT / "model" / "qformer_lite_xsite" / "qformer_lite.pt"
RANKER = ROOT / "model" / "mask_ranker" / "ranker.json"


@pytest.fixture(scope="module")
def ranked_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("ranked"), conf={"models": "radvlsm", "qformer_checkpoint": str(XSITE)})
    yield srv
    stop_server(srv.proc)


@pytest.mark.e2e
def test_radvlsm_ranks_candidate_masks_over_the_cross_site_proposer(ranked_server, tmp_path):
    client = MONAILabelClient(ranked_server.url, tmpdir=str(tmp_path))
    label_file, res = client.infer("radvlsm", "bus_0075-r", {"text": "breast lesion", "diagnose": False,
                                                             "result_extension": ".png"})
    assert any(n.startswith("candidate masks ranked by mask_ranker") for n in res["notes"]), res.get("notes")
    assert res["lesions"], res
    label = load_mask(label_file)
    assert label.shape == reference("bus_0075-r").shape
    assert dice(label > 0, reference("bus_0075-r")) >= 0.8


@pytest.mark.e2e
def test_a_corrupt_ranker_file_stops_start_up_naming_it(tmp_path):
    bad = tmp_path / "ranker.json"
    bad.write_text("{truncated")
    with pytest.raises(RuntimeError) as err:
        start_server(tmp_path, conf={"models": "radvlsm", "qformer_checkpoint": str(XSITE),
                                     "mask_ranker": str(bad)}, timeout=240)
    assert "ranker.json" in str(err.value)
