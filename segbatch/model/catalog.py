"""Names of the architectures and dropout placements, and CamVid's classes and colours: plain data, importable without torch."""

from __future__ import annotations

ARCHS = ("segnet", "segnet-basic")

# Where the 0.5 dropout layers go, by the names of the Bayesian SegNet paper's
# variants. "pool<k>" drops after encoder k's pooling, "dec<k>" after decoder
# block k, "classifier" just before the classifier. "central" is the layout of
# the released Bayesian SegNet models.
SEGNET_PLACEMENTS: dict[str, tuple[str, ...]] = {
    "central": ("pool3", "pool4", "pool5", "dec5", "dec4", "dec3"),
    "central-encoder": ("pool3", "pool4", "pool5"),
    "central-decoder": ("dec5", "dec4", "dec3"),
    "encoder": ("pool1", "pool2", "pool3", "pool4", "pool5"),
    "decoder": ("dec5", "dec4", "dec3", "dec2", "dec1"),
    "encoder-decoder": ("pool1", "pool2", "pool3", "pool4", "pool5", "dec5", "dec4", "dec3", "dec2", "dec1"),
    "classifier": ("classifier",),
    "none": (),
}
BASIC_PLACEMENTS: dict[str, tuple[str, ...]] = {
    "central": ("pool3", "pool4", "dec4", "dec3"),
    "central-encoder": ("pool3", "pool4"),
    "central-decoder": ("dec4", "dec3"),
    "encoder": ("pool1", "pool2", "pool3", "pool4"),
    "decoder": ("dec4", "dec3", "dec2", "dec1"),
    "encoder-decoder": ("pool1", "pool2", "pool3", "pool4", "dec4", "dec3", "dec2", "dec1"),
    "classifier": ("classifier",),
    "none": (),
}
PLACEMENTS = tuple(SEGNET_PLACEMENTS)

# CamVid's 11 classes (void, label 11, is ignored) and the colours of the SegNet-Tutorial scripts: an imported
# CamVid model is labelled with them, and the demo scenes paint their classes (the same 11, in order) in the colours.
CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)

MAX_WIDTH = 4.0  # the largest channel-width multiplier a model is built with (and a checkpoint loaded with)


def width_problem(width: object) -> str | None:
    """Why `width` is not a channel-width multiplier in (0, MAX_WIDTH], or None when it is one."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= MAX_WIDTH:
        return f"width {width!r} is outside (0, {MAX_WIDTH:g}]"
    return None
