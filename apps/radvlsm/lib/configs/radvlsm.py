"""``radvlsm`` (the full pipeline, type segmentation) and ``diagnosis`` (type classification) share one pipeline:
the app's predictor (one encode per image), the qformer_lite proposer (helped by the site's exemplars with
``--conf site_exemplars true``: VESSA stage 1, :mod:`radvlsm.proposals.site_exemplars`; off by default, as measured
neutral) and the shipped diagnosis head."""

from __future__ import annotations

import logging
import os
from functools import cached_property

from monailabel.interfaces.config import TaskConfig

from lib.infers.radvlsm import diagnosis_infer, radvlsm_infer
from lib.models import (
    learn_final_label,
    learn_saved_labels,
    shared_predictor,
    shared_site_exemplars,
    site_exemplars_on,
)
from radvlsm.pipeline import RadVLSMPipeline
from radvlsm.pipeline_service import DiagnosisService, PipelineService
from radvlsm.proposals import build_proposer
from radvlsm.proposals.site_exemplars import ExemplarAssistedProposer

logger = logging.getLogger(__name__)
_pipelines: dict[tuple, RadVLSMPipeline] = {}


def proposer_kwargs(conf: dict[str, str], model_dir: str, predictor) -> dict:
    """The qformer_lite checkpoint, and the store of its fine-tunes (``/train/radvlsm``) that it follows live."""
    from radvlsm.training.datastore import proposer_store

    checkpoint = conf.get("qformer_checkpoint") or os.path.join(model_dir, "qformer_lite", "qformer_lite.pt")
    store = proposer_store(conf["trained_dir"], predictor.backbone.name) if conf.get("trained_dir") else None
    return {"checkpoint": checkpoint, "store": store}


def shared_pipeline(conf: dict[str, str], model_dir: str) -> RadVLSMPipeline:
    key = (tuple(sorted(conf.items())), model_dir)
    if key not in _pipelines:
        predictor = shared_predictor(conf)
        proposer = build_proposer("qformer_lite", predictor=predictor, **proposer_kwargs(conf, model_dir, predictor))
        head_dir = conf.get("diagnosis_dir") or os.path.join(model_dir, "diagnosis")
        diagnoser = None
        if os.path.exists(os.path.join(head_dir, "head.json")):
            from radvlsm.diagnosis import Diagnoser
            from radvlsm.training.datastore import head_store

            # site-recalibrated heads (POST /train/diagnosis) are followed live, as the decoder is
            store = head_store(conf["trained_dir"], predictor.backbone.name) if conf.get("trained_dir") else None
            diagnoser = Diagnoser.load(head_dir, store=store)
        else:
            logger.warning(f"radvlsm: no diagnosis head in {head_dir}; diagnosis is off")
        if site_exemplars_on(conf):
            proposer = ExemplarAssistedProposer(proposer, shared_site_exemplars(conf, predictor),
                                                conf.get("text", "lesion"))
        _pipelines[key] = RadVLSMPipeline(predictor, proposer, diagnoser)
    return _pipelines[key]


def text_proposer(pipeline: RadVLSMPipeline):
    """The pipeline's qformer_lite proposer (what training fine-tunes), under the exemplar assistance if any."""
    return getattr(pipeline.proposer, "text", pipeline.proposer)


class RadVLSMConfig(TaskConfig):
    @cached_property
    def pipeline(self) -> RadVLSMPipeline:
        return shared_pipeline(self.conf, self.model_dir)

    def infer(self):
        return radvlsm_infer(PipelineService(self.pipeline, self.conf.get("text", "lesion")))

    def trainer(self):
        """``/train/radvlsm``: fine-tunes the shared predictor's decoder (the ``sam`` task serves it too)."""
        from lib.trainers.radvlsm import RadVLSMTrain
        from radvlsm.training.datastore import decoder_store, proposer_store, pseudo_store

        predictor, trained = self.pipeline.predictor, self.conf["trained_dir"]
        return RadVLSMTrain(predictor, decoder_store(trained, predictor.backbone.name), text_proposer(self.pipeline),
                            proposer_store(trained, predictor.backbone.name), self.conf.get("text", "lesion"),
                            pseudo_store(trained, predictor.backbone.name))

    def on_datastore(self, datastore) -> None:
        if isinstance(self.pipeline.proposer, ExemplarAssistedProposer):
            learn_saved_labels(self.pipeline.proposer.site, datastore, self.pipeline.proposer.text,
                               self.pipeline.proposer.phrase)

    def on_save_label(self, datastore, image_id: str) -> None:
        """A saved final label joins the site's exemplars at once (no training needed)."""
        if isinstance(self.pipeline.proposer, ExemplarAssistedProposer):
            learn_final_label(self.pipeline.proposer.site, datastore, image_id, self.pipeline.proposer.text,
                              self.pipeline.proposer.phrase)

    def scoring_method(self):
        from lib.activelearning import UncertaintyScoring

        return UncertaintyScoring(lambda: self.pipeline, self.conf.get("text", "lesion"))


class DiagnosisConfig(RadVLSMConfig):
    def infer(self):
        return diagnosis_infer(DiagnosisService(self.pipeline, self.conf.get("text", "lesion")))

    def trainer(self):
        """``/train/diagnosis``: recalibrates the shared diagnosis head on final labels with a pathology."""
        from lib.trainers.diagnosis import DiagnosisTrain
        from radvlsm.training.datastore import head_store

        backbone = self.pipeline.predictor.backbone.name
        return DiagnosisTrain(lambda: self.pipeline, head_store(self.conf["trained_dir"], backbone))

    def scoring_method(self):
        return None
