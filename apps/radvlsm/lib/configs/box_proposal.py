"""``box_proposal``: phrase -> candidate lesion boxes (MONAI Label type detection, 2D).

Backends: ``qformer_lite`` (default, shipped in model/qformer_lite; the ``radvlsm`` pipeline's own text proposer,
following the same fine-tunes), ``template`` (the site's exemplar bank, shared with the ``radvlsm`` pipeline: seeded
from the datastore's final labels and refreshed whenever a label is saved) and ``blip2`` (only with
``--conf blip2_path``). All of them are the app's stack's (:mod:`lib.models`).
"""

from __future__ import annotations

from functools import cached_property

from monailabel.interfaces.config import TaskConfig

from lib.infers.box_proposal import box_proposal_infer
from lib.models import learn_final_label, learn_saved_labels, shared_stack
from radvlsm.proposal_service import ProposalService
from radvlsm.stack import Stack


class BoxProposalConfig(TaskConfig):
    @cached_property
    def stack(self) -> Stack:
        return shared_stack(self.conf, self.model_dir)

    def infer(self):
        stack = self.stack
        return box_proposal_infer(ProposalService(stack.predictor, stack.box_proposers(),
                                                  default_text=stack.settings.text))

    def trainer(self):
        return None

    def _scorer(self):
        """The text proposer each label is scored against before it joins the bank: only the pipeline's exemplar
        help reads those scores, so with it off (``--conf site_exemplars false``) a label save does not run two
        proposers for nothing.
        With it, whichever task hears of the save first scores it (learning is idempotent)."""
        return self.stack.text_proposer if self.stack.settings.site_exemplars else None

    def on_datastore(self, datastore) -> None:
        """Seed the site's exemplars with the final labels already saved (in the background: each is encoded)."""
        learn_saved_labels(self.stack.site, datastore, self._scorer(), self.stack.settings.text,
                           keep=self.stack.labelled_embeddings)

    def on_save_label(self, datastore, image_id: str) -> None:
        learn_final_label(self.stack.site, datastore, image_id, self._scorer(), self.stack.settings.text,
                          keep=self.stack.labelled_embeddings)
