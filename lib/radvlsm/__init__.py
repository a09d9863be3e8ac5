"""radvlsm: text-guided lesion segmentation and diagnosis for 2D medical images."""

__version__ = "0.1.0"
