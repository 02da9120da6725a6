"""Input sources: video, rasters and image folders, each read in pieces by the workers."""

from segbatch import location
from segbatch.location import Location

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")


def source_kind(path: Location) -> str:
    """Say "video" or "raster": by suffix when it says, else by whether FFmpeg can open the file (a URL without one: video)."""
    from segbatch.sources.video import VIDEO_SUFFIXES

    suffix = location.suffix(path)
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in RASTER_SUFFIXES or location.is_url(path) or not location.exists(path):
        return "raster" if suffix in RASTER_SUFFIXES else "video"
    import av

    try:
        with av.open(str(path)):
            return "video"
    except (av.FFmpegError, ValueError, UnicodeDecodeError):
        return "raster"
