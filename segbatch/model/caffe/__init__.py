"""Import the released Caffe SegNet / Bayesian SegNet models (a .prototxt plus a .caffemodel), without Caffe.

Three steps, one module each: `schema` reads both files into plain layers and
blobs, `layers` walks the layers into SegNet's blocks and finds the
architecture, width and dropout placement they fit, and `weights` builds that
SegNet and copies the blobs into it (`import_caffe`, the entry point).
"""

from __future__ import annotations

from segbatch.model.caffe.weights import SEGNET_BN_EPS, import_caffe

__all__ = ["SEGNET_BN_EPS", "import_caffe"]
