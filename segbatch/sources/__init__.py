"""Input sources: video, rasters and image folders, each read in pieces by the workers."""

from pathlib import Path

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")


def source_kind(path: Path) -> str:
    """Say "video" or "raster": by suffix when it says, else by whether FFmpeg can open the file."""
    from segbatch.sources.video import VIDEO_SUFFIXES

    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in RASTER_SUFFIXES or not path.exists():
        return "raster" if suffix in RASTER_SUFFIXES else "video"
    import av

    try:
        with av.open(str(path)):
            return "video"
    except (av.FFmpegError, ValueError, UnicodeDecodeError):
        return "raster"
