"""The one composition root: :class:`Settings` (data) -> :class:`Stack` (what serves them).

A stack is the predictor (backbone + encoder runtime + embedding cache, its decoder following the published
versions), the ``qformer_lite`` text proposer (following its fine-tunes), the site's exemplar bank, the diagnoser
(following its recalibrated heads) and the pipeline over them. Every part is built on first use, once, under the
stack's lock, so a process that serves only the ``sam`` task never loads a proposer.

The MONAI Label app builds one stack per process (``apps/radvlsm/lib/models.py``), the ``radvlsm`` command line
one per run (:mod:`radvlsm.cli`), and both follow the versions training publishes under ``trained_dir``
(:mod:`radvlsm.versions`); nothing here imports :mod:`radvlsm.training`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.versions.locations import decoder_store, head_store, labelled_embeddings_dir, proposer_store

if TYPE_CHECKING:
    from radvlsm.diagnosis.head import Diagnoser
    from radvlsm.mask_ranking import MaskRanker
    from radvlsm.pipeline import RadVLSMPipeline
    from radvlsm.predictor import SegmentPredictor
    from radvlsm.proposals.base import BoxProposer
    from radvlsm.proposals.qformer_lite import QFormerLiteProposer
    from radvlsm.proposals.site_exemplars import SiteExemplars
    from radvlsm.versions.store import DecoderStore, HeadStore, ProposerStore

logger = logging.getLogger(__name__)
#: the repository's ``model/`` folder: the shipped qformer_lite checkpoint and diagnosis head
MODEL_DIR = Path(__file__).resolve().parents[2] / "model"
T = TypeVar("T")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: the server's encoder niceness (``--conf encoder_nice``; 0 encodes in the server process): the lowest priority,
#: since an encode alone still gets every core (``benchmarks/bench_serving.py``, README *Serving many annotators*)
SERVER_ENCODER_NICE = 19


@dataclass(frozen=True)
class Settings:
    """What a stack is built from (hashable: the app keeps one stack per distinct settings).

    The defaults are the app's (``--conf`` keys of the same names, :meth:`from_conf`); ``device`` None picks CUDA
    when there is one. ``trained_dir`` None serves the shipped weights only; with it, the decoder, the proposer
    and the diagnosis head follow what training publishes there. ``diagnose`` False never loads the diagnosis
    head; ``warm_up`` runs the encoder once at build (the first request must not pay for an export).
    """

    backbone: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    runtime: str = "auto"
    runtime_dir: str | None = None
    #: > 0: the image encoder runs in a child process at this lower CPU priority, so that other users' prompts
    #: are decoded first while a new image encodes (:mod:`radvlsm.encoder_process`). Off in the library (one
    #: user); the server's default (``from_conf``) is :data:`SERVER_ENCODER_NICE`
    encoder_nice: int = 0
    cache_mb: int = 512
    disk_cache: str | None = None
    trained_dir: str | None = None
    qformer_checkpoint: str | None = None
    diagnosis_dir: str | None = None
    text: str = DEFAULT_PHRASE
    #: the site's own phrases ("breast lesion"): what ``/train/radvlsm`` teaches the proposer besides ``text``
    #: unless a request names its ``proposer_phrases`` (``--conf site_phrases "breast lesion;breast mass"``)
    site_phrases: tuple[str, ...] = ()
    #: the site's exemplars help the text path (VESSA stage 1, :mod:`radvlsm.proposals.site_exemplars`): on by
    #: default: +5-10 text Dice points at a new site (BUS-UCLM) and, with the presence prior of session 13, nothing
    #: lost in domain over 16 draws of 5-10 BUS-BRA labels (README)
    site_exemplars: bool = True
    template_exemplars: int = 200
    blip2_path: str | None = None
    #: ``auto``: the shipped mask ranker (``model/mask_ranker``) when it was trained with the served proposer
    #: checkpoint; ``off``; or a ranker file (:mod:`radvlsm.mask_ranking`)
    mask_ranker: str = "auto"
    model_dir: str = str(MODEL_DIR)
    diagnose: bool = True
    warm_up: bool = True

    @classmethod
    def from_conf(cls, conf: dict[str, str], model_dir: str | Path | None = None) -> Settings:
        """MONAI Label's ``--conf`` strings (``backbone``, ``checkpoint``, ``device``, ``runtime``, ``runtime_dir``,
        ``encoder_nice``,
        ``cache_mb``, ``trained_dir``, ``qformer_checkpoint``, ``diagnosis_dir``, ``text``, ``site_phrases``
        (separated by ``;``), ``site_exemplars``,
        ``template_exemplars``, ``blip2_path``); ``model_dir`` is the app's model folder."""
        return cls(
            backbone=conf.get("backbone", "litemedsam"),
            checkpoint=conf.get("checkpoint") or None,
            device=conf.get("device") or None,
            runtime=conf.get("runtime", "auto"),
            runtime_dir=conf.get("runtime_dir") or None,
            encoder_nice=int(conf.get("encoder_nice", str(SERVER_ENCODER_NICE))),
            cache_mb=int(conf.get("cache_mb", "512")),
            trained_dir=conf.get("trained_dir") or None,
            qformer_checkpoint=conf.get("qformer_checkpoint") or None,
            diagnosis_dir=conf.get("diagnosis_dir") or None,
            text=conf.get("text", DEFAULT_PHRASE),
            site_phrases=tuple(p.strip() for p in conf.get("site_phrases", "").split(";") if p.strip()),
            site_exemplars=_flag(conf, "site_exemplars", True),
            template_exemplars=int(conf.get("template_exemplars", "200")),
            blip2_path=conf.get("blip2_path") or None,
            mask_ranker=conf.get("mask_ranker", "auto") or "auto",
            model_dir=str(model_dir) if model_dir is not None else str(MODEL_DIR),
        )

    @property
    def qformer_path(self) -> str:
        return self.qformer_checkpoint or os.path.join(self.model_dir, "qformer_lite", "qformer_lite.pt")

    @property
    def ranker_path(self) -> str | None:
        """The mask ranker file asked for (``auto``: the shipped one, if there is one), or None (``off``)."""
        if self.mask_ranker == "off":
            return None
        if self.mask_ranker == "auto":
            path = os.path.join(self.model_dir, "mask_ranker", "ranker.json")
            return path if os.path.exists(path) else None
        return self.mask_ranker

    @property
    def head_dir(self) -> str:
        return self.diagnosis_dir or os.path.join(self.model_dir, "diagnosis")


class Stack:
    """The served parts for :attr:`settings`, each built on first use (thread-safe, once)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.RLock()  # parts build parts (the pipeline builds the predictor): re-entrant
        self._parts: dict[str, Any] = {}

    def _once(self, name: str, build: Callable[[], T]) -> T:
        if name in self._parts:
            return self._parts[name]
        with self.lock:
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]

    # -- where the versions are published (None: shipped weights only) ---------------------------------------------
    @property
    def decoder_store(self) -> DecoderStore | None:
        s = self.settings
        return decoder_store(s.trained_dir, s.backbone) if s.trained_dir else None

    @property
    def proposer_store(self) -> ProposerStore | None:
        s = self.settings
        return proposer_store(s.trained_dir, s.backbone) if s.trained_dir else None

    @property
    def head_store(self) -> HeadStore | None:
        s = self.settings
        return head_store(s.trained_dir, s.backbone) if s.trained_dir else None

    @property
    def labelled_embeddings(self) -> Path | None:
        """Where the server keeps its labelled images' embeddings for training runs (None without ``trained_dir``)."""
        return labelled_embeddings_dir(self.settings.trained_dir) if self.settings.trained_dir else None

    # -- the parts --------------------------------------------------------------------------------------------------
    @property
    def predictor(self) -> SegmentPredictor:
        """Backbone + embedding cache, shared by every task (one encode per image); the encoder runtime is built
        (ONNX export if not cached) and warmed up here; the decoder follows :attr:`decoder_store`."""
        return self._once("predictor", self._build_predictor)

    def _build_predictor(self) -> SegmentPredictor:
        from radvlsm.cache import EmbeddingCache
        from radvlsm.models import build_backbone
        from radvlsm.predictor import SegmentPredictor

        s = self.settings
        device = s.device or default_device()
        model = build_backbone(s.backbone, checkpoint=s.checkpoint, device=device)
        logger.info(f"radvlsm: backbone {s.backbone} (version {model.version}) on {device}; "
                    f"embedding cache {s.cache_mb} MB")
        predictor = SegmentPredictor(model, EmbeddingCache(max_bytes=s.cache_mb << 20), disk_cache=s.disk_cache,
                                     runtime=s.runtime, runtime_dir=s.runtime_dir, encoder_nice=s.encoder_nice)
        if s.warm_up:
            from radvlsm.runtimes.warmup import warm_up

            warm_up(predictor)
        store = self.decoder_store
        if store is not None:  # serve the decoder the radvlsm train task publishes, live
            version = predictor.follow(store)
            logger.info(f"radvlsm: decoder versions in {store.root}; serving {version}")
        return predictor

    @property
    def text_proposer(self) -> QFormerLiteProposer:
        """The ``qformer_lite`` proposer (what training fine-tunes), following :attr:`proposer_store`."""
        return self._once("text_proposer", self._build_text_proposer)

    def _build_text_proposer(self) -> QFormerLiteProposer:
        from radvlsm.proposals import build_proposer

        return build_proposer("qformer_lite", predictor=self.predictor, checkpoint=self.settings.qformer_path,
                              store=self.proposer_store, site_phrases=self.settings.site_phrases)

    @property
    def site(self) -> SiteExemplars:
        """The site's exemplar bank over the predictor: fed by every task that hears of a saved final label, read
        by the ``template`` backend and (with ``site_exemplars``) the pipeline."""
        return self._once("site", self._build_site)

    def _build_site(self) -> SiteExemplars:
        from radvlsm.proposals import build_proposer
        from radvlsm.proposals.site_exemplars import SiteExemplars

        bank = build_proposer("template", predictor=self.predictor, max_exemplars=self.settings.template_exemplars)
        return SiteExemplars(bank)

    @property
    def proposer(self) -> BoxProposer:
        """The pipeline's proposer: the text proposer, helped by the site's exemplars with ``site_exemplars``
        (VESSA stage 1, :mod:`radvlsm.proposals.site_exemplars`)."""
        return self._once("proposer", self._build_proposer)

    def _build_proposer(self) -> BoxProposer:
        proposer: BoxProposer = self.text_proposer
        if self.settings.site_exemplars:
            from radvlsm.proposals.site_exemplars import ExemplarAssistedProposer

            proposer = ExemplarAssistedProposer(proposer, self.site, self.settings.text)
        ranker = self.mask_ranker
        if ranker is None:
            return proposer
        from radvlsm.proposals.ranked import RankedProposer

        return RankedProposer(proposer, self.predictor, ranker)

    @property
    def mask_ranker(self) -> MaskRanker | None:
        """The pipeline's second stage (:mod:`radvlsm.mask_ranking`), or None. ``auto`` uses the shipped ranker only
        over the proposer checkpoint it was trained with (its features read that proposer's relevance map)."""
        return self._once("mask_ranker", self._build_mask_ranker)

    def _build_mask_ranker(self) -> MaskRanker | None:
        from radvlsm.mask_ranking import MaskRanker

        path = self.settings.ranker_path
        if path is None:
            return None
        ranker = MaskRanker.load(path)
        proposer = self.text_proposer.base_id  # the served checkpoint's content hash (what the ranker records)
        if ranker.proposer and ranker.proposer != proposer:
            if self.settings.mask_ranker == "auto":
                logger.info(f"radvlsm: mask ranker {path} was trained over another proposer checkpoint; not used")
                return None
            logger.warning(f"radvlsm: mask ranker {path} was trained over proposer {ranker.proposer}, "
                           f"serving {proposer}")
        logger.info(f"radvlsm: mask ranker {path} (version {ranker.version})")
        return ranker

    @property
    def blip2(self) -> BoxProposer | None:
        """The ``blip2`` backend (only with ``blip2_path``)."""
        return self._once("blip2", self._build_blip2)

    def _build_blip2(self) -> BoxProposer | None:
        if not self.settings.blip2_path:
            return None
        from radvlsm.proposals import build_proposer

        return build_proposer("blip2", model_path=self.settings.blip2_path, device=str(self.predictor.device))

    def box_proposers(self) -> dict[str, BoxProposer]:
        """The ``box_proposal`` task's backends: ``qformer_lite`` (the pipeline's text proposer), ``template`` (the
        site's bank) and ``blip2`` when configured."""
        proposers = {"qformer_lite": self.text_proposer, "template": self.site.bank}
        if self.blip2 is not None:
            proposers["blip2"] = self.blip2
        return proposers

    @property
    def diagnoser(self) -> Diagnoser | None:
        """The shipped diagnosis head (``diagnosis_dir``), following :attr:`head_store`; None when there is no head
        (or ``diagnose`` is off)."""
        return self._once("diagnoser", self._build_diagnoser)

    def _build_diagnoser(self) -> Diagnoser | None:
        if not self.settings.diagnose:
            return None
        head_dir = self.settings.head_dir
        if not os.path.exists(os.path.join(head_dir, "head.json")):
            logger.warning(f"radvlsm: no diagnosis head in {head_dir}; diagnosis is off")
            return None
        from radvlsm.diagnosis import Diagnoser

        # site-recalibrated heads (POST /train/diagnosis) are followed live, as the decoder is; a head with the
        # ``roi`` view encodes the lesion crop with the stack's predictor (built when first needed)
        return Diagnoser.load(head_dir, encoder=lambda image: self.predictor.encode(image), store=self.head_store)

    @property
    def pipeline(self) -> RadVLSMPipeline:
        """Predictor, proposer and diagnoser: the ``radvlsm`` and ``diagnosis`` tasks' pipeline, the CLI's."""
        return self._once("pipeline", self._build_pipeline)

    def _build_pipeline(self) -> RadVLSMPipeline:
        return self.pipeline_over(self.proposer)

    # -- parts the server does not serve, over the same predictor (what benchmarks compare) ------------------------
    def pipeline_over(self, proposer: Any) -> RadVLSMPipeline:
        """The stack's pipeline (its predictor and diagnoser) over another proposer: a rule compared with the
        served one, or the served proposer wrapped to keep its answers."""
        from radvlsm.pipeline import RadVLSMPipeline

        return RadVLSMPipeline(self.predictor, proposer, self.diagnoser)

    def proposer_over(self, name: str, **kwargs: Any) -> BoxProposer:
        """A proposer the stack does not serve, over its predictor (one encode per image for both): ``qformer_lite``
        from another checkpoint or following another store, a fresh ``template`` bank, another backend."""
        from radvlsm.proposals import build_proposer

        return build_proposer(name, predictor=self.predictor, **kwargs)


def _flag(conf: dict[str, str], key: str, default: bool) -> bool:
    """A ``--conf`` switch: ``true`` or ``false`` (any case); anything else is refused by name, not read as off."""
    value = conf.get(key)
    if value is None or value.strip() == "":
        return default
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(f"--conf {key}: expected true or false, got {value!r}")
    return value.strip().lower() == "true"
