"""Input sources: video, rasters and image folders, each read in pieces by the workers."""
