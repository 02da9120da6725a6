"""Atomic file writes: every artefact a user keeps appears whole or not at all."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from segbatch.errors import InputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed.

    The temporary file keeps the target's suffix, so writers that pick a format
    by extension (GDAL, PyAV, Pillow) still do.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {path}: folder {parent} is not writable")
    tmp = parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(building: Path, target: Path) -> None:
    """Put the folder `building` (made beside `target`) in `target`'s place: renames, so readers see the old folder or the new
    one whole; an old one is removed after."""
    import shutil

    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(building, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_folder_target(folder: Path, overwrite: bool, what: str, ours: Callable[[Path], bool], inputs: Mapping[str, str | Path | None]) -> None:
    """A folder a command builds aside and renames into place (replace_folder): it may be new, empty, or, with --overwrite, one
    that `ours` says the command made before (`what`: "audit report"); never one that holds any of the command's `inputs`
    (name -> location)."""
    from segbatch import location

    noun = what.split()[-1]
    for name, path in inputs.items():
        if path is not None and location.inside(path, folder):
            raise InputError(f"the {name} {path} is inside the {noun} folder {folder}, which would be replaced; pick another")
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {folder}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {folder}: folder {parent} is not writable")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; the {noun} is a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise InputError(f"{folder} exists and is not empty; pass --overwrite to replace it")
        if not ours(folder):
            raise InputError(f"{folder} is not a segbatch {what}; refusing to replace it")
