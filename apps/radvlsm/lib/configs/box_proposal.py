"""``box_proposal``: phrase -> candidate lesion boxes (MONAI Label type detection, 2D).

Backends: ``qformer_lite`` (default, shipped in model/qformer_lite), ``template`` (exemplar bank seeded from the
datastore's final labels and refreshed whenever a label is saved) and ``blip2`` (only with ``--conf blip2_path``).
"""

from __future__ import annotations

import logging
import threading

from monailabel.interfaces.config import TaskConfig

from lib.configs.radvlsm import proposer_kwargs
from lib.infers.box_proposal import box_proposal_infer
from lib.models import shared_predictor
from radvlsm.io import load_image, load_mask
from radvlsm.proposal_service import ProposalService
from radvlsm.proposals import build_proposer

logger = logging.getLogger(__name__)


class BoxProposalConfig(TaskConfig):
    def infer(self):
        predictor = shared_predictor(self.conf)
        kwargs = proposer_kwargs(self.conf, self.model_dir, predictor)
        proposers = {"qformer_lite": build_proposer("qformer_lite", predictor=predictor, **kwargs)}
        self.template = build_proposer("template", predictor=predictor,
                                       max_exemplars=int(self.conf.get("template_exemplars", "20")))
        proposers["template"] = self.template
        if self.conf.get("blip2_path"):
            proposers["blip2"] = build_proposer("blip2", model_path=self.conf["blip2_path"],
                                                device=str(predictor.device))
        text = self.conf.get("text", "lesion")
        return box_proposal_infer(ProposalService(predictor, proposers, default_text=text))

    def trainer(self):
        return None

    def on_datastore(self, datastore) -> None:
        """Seed the template bank with the final labels already saved (in the background: each is encoded)."""
        ids = datastore.get_labeled_images(label_tag="final")
        if ids:
            threading.Thread(target=lambda: [self.add_exemplar(datastore, i) for i in ids], daemon=True,
                             name="template-bank").start()

    def on_save_label(self, datastore, image_id: str) -> None:
        if datastore.get_label_uri(image_id, "final"):
            self.add_exemplar(datastore, image_id)

    def add_exemplar(self, datastore, image_id: str) -> None:
        try:
            image = load_image(datastore.get_image_uri(image_id))
            mask = load_mask(datastore.get_label_uri(image_id, "final"), image.shape)
            if mask.any():
                self.template.add_exemplar(image_id, image, mask > 0)
        except Exception as exc:  # a bad stored label must not break saving or serving
            logger.warning(f"template bank: skipped {image_id}: {exc}")
