"""The diagnosis answer: probability, label, the descriptors that drove it, and the mask facts behind it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def pretty_name(name: str) -> str:
    """``original_glcm_Correlation`` -> ``glcm Correlation``; ``radvlsm_shape2D_X`` -> ``shape2D X``."""
    parts = name.split("_", 2)
    return f"{parts[1]} {parts[2]}" if len(parts) == 3 and parts[0] in ("original", "radvlsm") else name


@dataclass
class Contribution:
    """How one input moved the malignancy log-odds away from the average training lesion."""

    name: str
    value: float | None  # the descriptor's raw value (None for the pooled visual block)
    z: float | None  # standard deviations from the training mean (after the head's transform)
    logit: float  # signed contribution to the log-odds: > 0 pushed towards malignant

    def line(self) -> str:
        direction = "towards malignant" if self.logit > 0 else "towards benign"
        if self.value is None:
            return f"{pretty_name(self.name)}: {self.logit:+.2f} log-odds ({direction})"
        return (f"{pretty_name(self.name)} = {self.value:.4g} ({self.z:+.1f} SD): {self.logit:+.2f} log-odds "
                f"({direction})")


@dataclass
class DiagnosisResult:
    """``status`` is ``ok`` or ``not_enough_lesion``; in the latter case ``probability`` and ``label`` are None."""

    status: str
    probability: float | None = None  # calibrated P(malignant)
    label: str | None = None  # "malignant" / "benign" at ``threshold``
    threshold: float | None = None
    mode: str | None = None  # "fused" (radiomics + visual) or "radiomics-only" (no embedding given)
    contributions: list[Contribution] = field(default_factory=list)  # sorted by |logit|, largest first
    baseline_logit: float | None = None  # log-odds of the average training lesion; + sum(contributions) = logit
    mask: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    model: str = ""
    version: str = "shipped"  # the head that answered: "shipped" or a site-recalibrated "v000N"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        if not self.ok:
            return f"No diagnosis: {self.message}"
        top = "; ".join(c.line() for c in self.contributions[:3])
        return (f"{self.label.capitalize()} (P(malignant) = {self.probability:.2f}, threshold {self.threshold:.2f}, "
                f"{self.mode}). Main drivers: {top}.")

    def to_text(self) -> str:
        """Multi-line plain text for reports and logs."""
        lines = [self.summary()]
        if self.ok:
            lines.append("Contributions (log-odds vs the average training lesion):")
            lines += [f"  - {c.line()}" for c in self.contributions]
        m = self.mask
        if m:
            lines.append(f"Mask: {m.get('area_px')} px, bbox {m.get('bbox_xyxy')}, {m.get('n_components')} "
                         f"component(s){', touches the image border' if m.get('touches_border') else ''}.")
        if self.ok and m.get("touches_border"):
            lines.append("Note: the lesion touches the image border; shape descriptors describe the visible part.")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; ``summary`` and ``text`` hold the same answer as plain text."""
        d = asdict(self)
        d["contributions"] = [
            {**asdict(c), "label": pretty_name(c.name), "explanation": c.line()} for c in self.contributions
        ]
        d["summary"] = self.summary()
        d["text"] = self.to_text()
        return d

    def __str__(self) -> str:
        return self.to_text()
