"""Request-level ``radvlsm`` (text -> masks -> diagnosis) and ``diagnosis`` tasks."""

from __future__ import annotations

from typing import Any

import numpy as np

from radvlsm.defaults import DEFAULT_PHRASE, lesion_names
from radvlsm.errors import InputError
from radvlsm.geometry import parse_prompts
from radvlsm.io import Image2D, load_mask
from radvlsm.pipeline import PipelineOptions, RadVLSMPipeline
from radvlsm.service import LabelResult, run_on_input
from radvlsm.task_specs import RADVLSM
from radvlsm.volume import Volume, load_label_for, slice_areas
from radvlsm.volume_pipeline import DIAGNOSIS_MODALITIES, VolumeTextConfig, text_on_volume
from radvlsm.volume_prompts import prompt_slice, requested_range
from radvlsm.volume_tasks import on_slice, volume_keys

CLASSES = ("benign", "malignant")


def pipeline_options(request: dict[str, Any], default_text: str) -> PipelineOptions:
    return PipelineOptions(text=request.get("text", default_text), top_k=RADVLSM.read(request, "top_k"),
                           diagnose=RADVLSM.read(request, "diagnose"),
                           max_lesions=RADVLSM.read(request, "max_lesions"))


class PipelineService:
    def __init__(self, pipeline: RadVLSMPipeline, default_text: str = DEFAULT_PHRASE):
        self.pipeline = pipeline
        self.default_text = default_text

    def run(self, request: dict[str, Any]) -> LabelResult:
        return run_on_input(request, self.run_image, self.run_volume)

    def run_image(self, image: Image2D, request: dict[str, Any]) -> LabelResult:
        opts = pipeline_options(request, self.default_text)
        prompts = parse_prompts(request, image.shape)
        res = self.pipeline.run(image, opts, prompts if not prompts.empty else None)
        res.result["runtime"] = self.pipeline.predictor.runtime.name  # the encoder runtime (radvlsm.runtimes)
        return LabelResult(res.label, image, res.result)

    def run_volume(self, volume: Volume, request: dict[str, Any]) -> LabelResult:
        """Prompts (or ``slice``) name one slice; otherwise the phrase runs on ``slices`` (default: all)."""
        k = prompt_slice(request, volume.n_slices)
        if k is not None:
            return on_slice(self.run_image, volume, request, k)
        first, last = requested_range(request, volume.n_slices)
        config = VolumeTextConfig(stride=RADVLSM.read(request, "slice_stride"))
        res = text_on_volume(self.pipeline, volume, pipeline_options(request, self.default_text), first, last,
                             config, modality=request_modality(request))
        res.result["runtime"] = self.pipeline.predictor.runtime.name
        return LabelResult(res.label, volume, res.result)


def request_modality(request: dict[str, Any]) -> str | None:
    """``modality`` (a DICOM modality code such as US, MR, CT): whether the diagnosis head applies to a volume."""
    value = request.get("modality")
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.isalnum() or len(value) > 16:
        raise InputError("modality", f"expected a DICOM modality code such as US, MR or CT, got {value!r:.40}")
    return value.upper()


def classification_json(diagnoses: list[Any]) -> dict[str, Any]:
    """MONAI Label's classification form for the first describable lesion, plus every lesion's full result."""
    ok = [d for d in diagnoses if d.ok]
    out: dict[str, Any] = {"diagnoses": [d.to_json() for d in diagnoses],
                           "text": "\n\n".join(f"Lesion {i + 1}: {d.to_text()}" for i, d in enumerate(diagnoses))}
    if ok:
        p = float(ok[0].probability)
        out.update(prediction=[{"idx": 0, "label": CLASSES[0], "score": round(1 - p, 4)},
                               {"idx": 1, "label": CLASSES[1], "score": round(p, 4)}],
                   probability_malignant=round(p, 4), label=ok[0].label)
    else:
        out.update(prediction=[], probability_malignant=None, label=None)
    if diagnoses:
        out["head_version"] = diagnoses[0].version
    return out


class DiagnosisService:
    """Diagnose the lesion(s) of a given mask (uploaded or stored), or of the pipeline's own mask."""

    def __init__(self, pipeline: RadVLSMPipeline, default_text: str = DEFAULT_PHRASE):
        self.pipeline = pipeline
        self.default_text = default_text

    def run(self, request: dict[str, Any]) -> LabelResult:
        return run_on_input(request, self.run_image, self.run_volume)

    def run_image(self, image: Image2D, request: dict[str, Any], label: np.ndarray | None = None) -> LabelResult:
        """The JSON, and the lesion mask(s) it diagnosed as the label (lesion i = i+1), so that clients that
        expect a file with every result (Slicer's plugin) get one and the user sees what was described."""
        out, masks = self.diagnose(image, request, label)
        label = None
        if masks:
            label = np.zeros(image.shape, np.uint8)
            for i, m in enumerate(masks):
                label[(m > 0) & (label == 0)] = i + 1
            # the label's values are lesions, not the benign/malignant classes of the prediction
            out["label_names"] = lesion_names(len(masks))
        return LabelResult(label, image, out)

    def run_volume(self, volume: Volume, request: dict[str, Any]) -> LabelResult:
        """One slice of a volume: ``slice``; else the label's (uploaded or saved) largest lesion slice; else the
        largest slice of the first lesion the phrase finds in the volume."""
        k = prompt_slice(request, volume.n_slices)
        label = load_label_for(request["label"], volume) if request.get("label") else None
        if k is None and label is not None and label.any():
            k = int(np.argmax(slice_areas(label)))
        if k is None:
            first, last = requested_range(request, volume.n_slices)
            found = text_on_volume(self.pipeline, volume,
                                   pipeline_options({**request, "diagnose": False}, self.default_text), first, last,
                                   VolumeTextConfig(stride=RADVLSM.read(request, "slice_stride")))
            if not found.lesions:
                out = classification_json([])
                out.update(mask_source="radvlsm pipeline", message=found.result["message"], pipeline=found.result)
                return LabelResult(None, volume, volume_keys(out, volume))
            k = found.result["lesions"][0]["largest_slice"]
            label = found.lesions[0].astype(np.uint8)
            request = {**request, "mask_source": "radvlsm pipeline (volume)"}
        res = on_slice(lambda image, sub: self.run_image(image, sub, None if label is None else label[k]),
                       volume, request, k)
        modality = request_modality(request)
        if modality not in DIAGNOSIS_MODALITIES:
            res.result["diagnosis_note"] = (f"the diagnosis head was trained on breast ultrasound; on a slice of "
                                            f"modality {modality or 'unknown'} its probability is not validated")
        return res

    def diagnose(self, image: Any, request: dict[str, Any], label: np.ndarray | None = None
                 ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The classification JSON and the lesion masks it described (``label``: the mask, already loaded)."""
        if self.pipeline.diagnoser is None:
            raise InputError("model", "no diagnosis head is loaded (model/diagnosis/head.json is missing)")
        label_path = request.get("label")
        if label is not None or label_path:
            if label is None:
                label = load_mask(label_path, image.shape, field_name="label")
            source = request.get("mask_source", "uploaded label")
            lesion_masks = [label == v for v in np.unique(label) if v > 0] or [label > 0]
            pipeline_json = None
        else:
            res = self.pipeline.run(image, pipeline_options({**request, "diagnose": False}, self.default_text))
            lesion_masks = [lesion.mask for lesion in res.lesions]
            source = "radvlsm pipeline"
            pipeline_json = res.result
            if not lesion_masks:
                out = classification_json([])
                out.update(mask_source=source, message=res.result["message"], pipeline=pipeline_json)
                return out, []
        enc = self.pipeline.predictor.encode(image)
        diagnoses = [self.pipeline.diagnoser.diagnose(image, m, embedding=enc) for m in lesion_masks]
        out = classification_json(diagnoses)
        out["mask_source"] = source
        if pipeline_json is not None:
            out["pipeline"] = {k: pipeline_json[k] for k in ("text", "match_score", "latencies_ms")}
        if not any(d.ok for d in diagnoses):
            out["message"] = diagnoses[0].to_text()
        return out, lesion_masks
