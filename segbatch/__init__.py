"""segbatch: batch semantic segmentation with calibrated uncertainty (SegNet / Bayesian SegNet)."""

__version__ = "0.3.0"
