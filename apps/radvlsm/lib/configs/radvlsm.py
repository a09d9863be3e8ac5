"""``radvlsm`` (the full pipeline, type segmentation) and ``diagnosis`` (type classification) share one pipeline,
the app's stack's (:mod:`lib.models`, :mod:`radvlsm.stack`): the app's predictor (one encode per image), the
qformer_lite proposer (helped by the site's exemplars: VESSA stage 1, :mod:`radvlsm.proposals.site_exemplars`;
``--conf site_exemplars false`` turns it off) and the shipped diagnosis head."""

from __future__ import annotations

from functools import cached_property

from monailabel.interfaces.config import TaskConfig

from lib.infers.radvlsm import diagnosis_infer, radvlsm_infer
from lib.models import learn_final_label, learn_saved_labels, shared_stack
from radvlsm.pipeline import RadVLSMPipeline
from radvlsm.pipeline_service import DiagnosisService, PipelineService
from radvlsm.stack import Stack


class RadVLSMConfig(TaskConfig):
    @cached_property
    def stack(self) -> Stack:
        return shared_stack(self.conf, self.model_dir)

    @property
    def pipeline(self) -> RadVLSMPipeline:
        return self.stack.pipeline

    def infer(self):
        return radvlsm_infer(PipelineService(self.pipeline, self.stack.settings.text))

    def trainer(self):
        """``/train/radvlsm``: fine-tunes the shared predictor's decoder (the ``sam`` task serves it too)."""
        from lib.trainers.radvlsm import RadVLSMTrain
        from radvlsm.training.datastore import pseudo_store

        stack = self.stack
        return RadVLSMTrain(stack.predictor, stack.decoder_store, stack.text_proposer, stack.proposer_store,
                            stack.settings.text, pseudo_store(stack.settings.trained_dir, stack.settings.backbone),
                            site_phrases=stack.settings.site_phrases, embeddings=stack.labelled_embeddings)

    def on_datastore(self, datastore) -> None:
        stack = self.stack
        if stack.settings.site_exemplars:
            learn_saved_labels(stack.site, datastore, stack.text_proposer, stack.settings.text,
                               keep=stack.labelled_embeddings)

    def on_save_label(self, datastore, image_id: str) -> None:
        """A saved final label joins the site's exemplars at once (no training needed)."""
        stack = self.stack
        if stack.settings.site_exemplars:
            learn_final_label(stack.site, datastore, image_id, stack.text_proposer, stack.settings.text,
                              keep=stack.labelled_embeddings)

    def scoring_method(self):
        from lib.activelearning import UncertaintyScoring

        return UncertaintyScoring(lambda: self.pipeline, self.stack.settings.text)


class DiagnosisConfig(RadVLSMConfig):
    def infer(self):
        return diagnosis_infer(DiagnosisService(self.pipeline, self.stack.settings.text))

    def trainer(self):
        """``/train/diagnosis``: recalibrates the shared diagnosis head on final labels with a pathology."""
        from lib.trainers.diagnosis import DiagnosisTrain

        return DiagnosisTrain(lambda: self.pipeline, self.stack.head_store, self.stack.labelled_embeddings)

    def scoring_method(self):
        return None
