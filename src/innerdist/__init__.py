"""innerdist: inner-distance targets and blockwise segmentation of microscopy volumes."""

__version__ = "0.1.0"
