"""One spec per infer task (``radvlsm.task_specs``): the services' typed reads, MONAI Label's config and the
OpenAPI tables all come from it, so a parameter's bounds and default are written once."""

from __future__ import annotations

import pytest

from radvlsm.aggregation import SelectionConfig
from radvlsm.defaults import DEFAULT_PHRASE, DEFAULT_TOP_K
from radvlsm.errors import InputError
from radvlsm.pipeline_service import pipeline_options
from radvlsm.task_specs import BOX_PROPOSAL, RADVLSM, SAM, SPECS, Param


def test_reads_check_type_and_range_and_name_the_field():
    assert RADVLSM.read({}, "top_k") == DEFAULT_TOP_K and RADVLSM.read({"top_k": "5"}, "top_k") == 5
    for bad in ({"top_k": 0}, {"top_k": 21}, {"top_k": "many"}, {"top_k": 2.5}):
        with pytest.raises(InputError) as err:
            RADVLSM.read(bad, "top_k")
        assert err.value.field == "top_k"
    assert SAM.read({"multilabel": "true"}, "multilabel") is True
    assert SAM.read({}, "multimask", True) is True and SAM.read({"multimask": False}, "multimask", True) is False
    with pytest.raises(InputError, match="heatmap"):
        BOX_PROPOSAL.read({"heatmap": "maybe"}, "heatmap")
    with pytest.raises(TypeError, match="own parser"):
        SAM.read({}, "slice")
    with pytest.raises(KeyError):
        SAM.read({}, "top_k")
    with pytest.raises(ValueError, match="kind"):
        Param("x", kind="float")


def test_the_pipeline_reads_its_options_through_the_spec():
    opts = pipeline_options({"top_k": 4, "max_lesions": 2, "diagnose": "false"}, DEFAULT_PHRASE)
    assert (opts.top_k, opts.selection.max_lesions, opts.diagnose) == (4, 2, False)
    assert pipeline_options({}, "x").selection.max_lesions == SelectionConfig.max_lesions \
        == RADVLSM.param("max_lesions").default
    with pytest.raises(InputError, match="max_lesions"):
        pipeline_options({"max_lesions": 21}, DEFAULT_PHRASE)


def test_config_and_docs_come_from_the_same_parameters():
    assert RADVLSM.config(text="breast lesion") == {"text": "breast lesion", "top_k": 3, "diagnose": True}
    assert SAM.config(backbone="litemedsam") == {"multilabel": False, "propagate": False, "backbone": "litemedsam"}
    assert BOX_PROPOSAL.config() == {"text": DEFAULT_PHRASE, "top_k": 3, "backend": "qformer_lite", "heatmap": False}
    for spec in SPECS.values():
        doc = spec.doc()
        assert [n for n, _ in doc["params"]] == [p.name for p in spec.params]
        assert all(meaning for _, meaning in doc["params"] + doc["result"]), spec.name
    assert dict(RADVLSM.doc()["params"])["max_lesions"] == "1-20, default 3: lesions returned at most"
