"""Names of the architectures and dropout placements: plain data, importable without torch."""

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

MAX_WIDTH = 4.0  # the largest channel-width multiplier a model is built with (and a checkpoint loaded with)


def width_problem(width: object) -> str | None:
    """Why `width` is not a channel-width multiplier in (0, MAX_WIDTH], or None when it is one."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= MAX_WIDTH:
        return f"width {width!r} is outside (0, {MAX_WIDTH:g}]"
    return None
