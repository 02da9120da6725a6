"""segbatch: batch semantic segmentation with calibrated uncertainty (SegNet / Bayesian SegNet)."""

__version__ = "0.1.0"
