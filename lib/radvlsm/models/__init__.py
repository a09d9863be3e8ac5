"""Promptable segmentation backbones (registry in :mod:`radvlsm.models.registry`)."""

from radvlsm.models.registry import Backbone, available_backbones, build_backbone, register_backbone

__all__ = ["Backbone", "available_backbones", "build_backbone", "register_backbone"]
