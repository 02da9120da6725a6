"""The kinds of input segbatch reads, registered once: a new kind is one module beside these and one line in KINDS.

Callers never test a kind's name: they ask its `Kind` (segbatch/kinds/base.py)
for its words, options, store fields and readers, and enumerate KINDS where
they list every kind.
"""

from segbatch.errors import InputError
from segbatch.kinds.base import Kind
from segbatch.kinds.images import Images
from segbatch.kinds.raster import Raster
from segbatch.kinds.video import Video
from segbatch.location import Location

__all__ = ["KINDS", "Kind", "kind", "kind_of"]

KINDS: dict[str, Kind] = {k.name: k for k in (Video(), Raster(), Images())}


def kind(name: str) -> Kind:
    """The kind a store or an input names; an InputError for one this version does not know."""
    found = KINDS.get(name)
    if found is None:
        raise InputError(f"{name!r} is no kind of input segbatch knows ({', '.join(KINDS)})")
    return found


def kind_of(path: Location) -> str:
    """The kind of the one input a path names: a folder is an image folder; a file is a video or a raster, as its reader
    tells (segbatch.sources.source_kind: by suffix, else by whether FFmpeg opens it)."""
    from segbatch import location
    from segbatch.sources import source_kind

    return Images.name if location.is_dir(path) else source_kind(path)
