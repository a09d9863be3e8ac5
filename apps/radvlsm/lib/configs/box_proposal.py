"""``box_proposal``: phrase -> candidate lesion boxes (MONAI Label type detection, 2D).

Backends: ``qformer_lite`` (default, shipped in model/qformer_lite), ``template`` (the site's exemplar bank, shared
with the ``radvlsm`` pipeline: seeded from the datastore's final labels and refreshed whenever a label is saved) and
``blip2`` (only with ``--conf blip2_path``).
"""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from lib.configs.radvlsm import proposer_kwargs
from lib.infers.box_proposal import box_proposal_infer
from lib.models import (
    learn_final_label,
    learn_saved_labels,
    shared_predictor,
    shared_site_exemplars,
    site_exemplars_on,
)
from radvlsm.proposal_service import ProposalService
from radvlsm.proposals import build_proposer


class BoxProposalConfig(TaskConfig):
    def infer(self):
        predictor = shared_predictor(self.conf)
        kwargs = proposer_kwargs(self.conf, self.model_dir, predictor)
        self.qformer = build_proposer("qformer_lite", predictor=predictor, **kwargs)
        self.site = shared_site_exemplars(self.conf, predictor)
        proposers = {"qformer_lite": self.qformer, "template": self.site.bank}
        if self.conf.get("blip2_path"):
            proposers["blip2"] = build_proposer("blip2", model_path=self.conf["blip2_path"],
                                                device=str(predictor.device))
        text = self.conf.get("text", "lesion")
        return box_proposal_infer(ProposalService(predictor, proposers, default_text=text))

    def trainer(self):
        return None

    def _scorer(self):
        """The text proposer each label is scored against before it joins the bank: only the pipeline's exemplar
        help reads those scores, so without it (the default) a label save does not run two proposers for nothing.
        With it, whichever task hears of the save first scores it (learning is idempotent)."""
        return self.qformer if site_exemplars_on(self.conf) else None

    def on_datastore(self, datastore) -> None:
        """Seed the site's exemplars with the final labels already saved (in the background: each is encoded)."""
        learn_saved_labels(self.site, datastore, self._scorer(), self.conf.get("text", "lesion"))

    def on_save_label(self, datastore, image_id: str) -> None:
        learn_final_label(self.site, datastore, image_id, self._scorer(), self.conf.get("text", "lesion"))
