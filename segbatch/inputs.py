"""One `--input` value expanded into the many inputs of a job: a folder, a glob, a @manifest or a STAC file.

Each input becomes a group `job.zarr/<name>/` of one job store, so its name must
be unique in the job (case-insensitively: object stores and macOS fold case),
safe as a path component on every store, and stable: the same set of inputs
always gives the same names, so a resumed job finds its groups again. Names come
from the path below a common base, not from the order inputs were listed in.

This module lists and names; it opens nothing but a folder's first raster (to
tell GeoTIFFs from a folder of plain TIFF images) and local files whose suffix
does not say their kind. Whether each input is readable is the engine's
question: it reports an unreadable input as that input's problem and goes on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

from segbatch import location
from segbatch.errors import InputError, first_line
from segbatch.kinds import KINDS, kind_of
from segbatch.location import Location
from segbatch.sources import RASTER_SUFFIXES, source_kind

# what a folder of rasters holds: the raster suffixes but PNG/JPEG (beside GeoTIFFs those are quicklooks)
FOLDER_RASTER_SUFFIXES = tuple(s for s in RASTER_SUFFIXES if s not in (".png", ".jpg", ".jpeg"))
# files that travel beside media and are never inputs themselves: a glob such as `scenes/**/*` skips them
SIDECAR_SUFFIXES = (
    *(".txt", ".md", ".json", ".geojson", ".xml", ".csv", ".yaml", ".yml", ".md5", ".sha256"),  # notes, metadata, checksums
    *(".ovr", ".msk", ".aux", ".prj", ".wld", ".tfw", ".tifw", ".pgw", ".jgw"),  # GDAL overviews and masks, world files
    *(".srt", ".thm", ".lrv"),  # drone and action-camera telemetry, thumbnails and low-resolution copies
)
RESERVED_NAMES = ("lease", "zarr.json")  # names the job store's root uses itself: such an input's name gets a trailing "_"
MAX_NAME = 200  # characters: file systems allow 255 bytes a component; longer names are cut and keep a hash of the whole

_MAGIC = re.compile(r"[*?[]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_COMMENT = re.compile(r"\s#.*$")  # a trailing comment needs a space before '#': `a#1.mp4` and `https://x/v.mp4#t=3` stay whole


@dataclass(frozen=True)
class Input:
    """One input of a many-input job: the group it writes in the job store, where it is, and what it is."""

    name: str  # the group name in the job store: unique in the job (case-insensitively), only [A-Za-z0-9._-]
    location: Location  # an absolute Path for a local file, a str for a URL
    kind: str  # its kind, a name in segbatch.kinds.KINDS (the inputs of a job: a kind that makes jobs of many)


@dataclass(frozen=True)
class _Entry:
    """An input before naming: its name is made from `parts`, the path below the base, one component each."""

    location: Location
    kind: str
    parts: tuple[str, ...]
    has_suffix: bool = True  # whether the last part ends in a file suffix that names drop (a STAC item id does not)


def sanitize_name(text: str) -> str:
    """`text` as a group name safe on every store: other characters become '_', and it never starts with '_' or '.' nor is reserved.

    A leading '_' or '.' would hide the group from listings (or clash with the
    store's own `_segbatch` group), so such a name gets an "i" in front.
    """
    name = _UNSAFE.sub("_", text)
    if not name:
        return "input"
    if name[0] in "_.":
        name = "i" + name
    if name.lower() in RESERVED_NAMES:
        name += "_"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{location_digest(text)}"
    return name


def many_inputs(spec: str, asset: str | None = None) -> list[Input] | None:
    """The inputs `spec` names as `expand_inputs` gives them, or None where it names one input (`is_many` False) and `asset` is None.

    One call does what `is_many` and then `expand_inputs` do, walking a folder
    and opening its first raster once. InputError as `expand_inputs`; a given
    `asset` always expands (and is refused where `spec` is not a STAC file).
    """
    if asset is not None or _many_by_form(spec):
        return _expand(spec, asset)
    folder = _local_folder(spec)
    if folder is None or not folder.many:
        return None
    return _expand(spec, None, folder)


def is_many(spec: str) -> bool:
    """Whether an --input value names many inputs: '@manifest', a glob (* ? [), a STAC .json, a folder of videos or of georeferenced rasters.

    A folder of plain images stays today's single image-folder input (False),
    so this opens the first raster of a folder to tell GeoTIFFs from images.
    A local file that exists is taken as named even when its name holds glob
    characters (`scene[1].tif`). A folder holding both videos and rasters is
    many (True): `expand_inputs` then refuses it, naming one of each.
    This only classifies (it reads no manifest or STAC file and never raises
    InputError); `many_inputs` classifies and expands in one walk.
    """
    if _many_by_form(spec):
        return True
    folder = _local_folder(spec)
    return folder is not None and folder.many


def expand_inputs(spec: str, asset: str | None = None) -> list[Input]:
    """The inputs `spec` names, sorted by location, all of one kind, each with its group name in the job store.

    InputError (one line) when nothing matches, kinds are mixed (naming one
    example of each), a manifest is unreadable or lists a file twice, a STAC
    file lacks --asset or an item lacks that asset (naming the item).
    `asset` is the STAC asset key (`visual`, `B04`) that each item's input is
    read from; it is refused for every other form, where it would mean nothing.
    A value that names one input (a file, an image folder) is refused too: the
    caller asks `is_many` first (or calls `many_inputs`, which does both).
    """
    return _expand(spec, asset)


def _many_by_form(spec: str) -> bool:
    """Whether `spec`'s form alone says many inputs: '@manifest', a glob, a STAC .json."""
    return spec.startswith("@") or _is_glob(spec) or location.suffix(spec) == ".json"


def _expand(spec: str, asset: str | None, folder: _Folder | None = None) -> list[Input]:
    """`expand_inputs`; `folder`: the scan of the local folder `spec` names, where the caller has made it already."""
    manifest, pattern = spec.startswith("@"), not spec.startswith("@") and _is_glob(spec)
    stac = not manifest and not pattern and location.suffix(spec) == ".json"
    if asset is not None and not stac:
        raise InputError(f"--asset is for STAC inputs (an Item or ItemCollection .json), not {spec}")
    if manifest:
        entries = _from_manifest(spec[1:])
    elif pattern:
        entries = _from_url_glob(spec) if location.is_url(spec) else _from_local_glob(spec)
    elif stac:
        entries = _from_stac(spec, asset)
    else:
        entries = _from_folder(spec, folder)
    entries.sort(key=lambda e: str(e.location))
    _refuse_mixed(spec, entries)
    return _named(entries)


def _is_glob(spec: str) -> bool:
    if location.is_url(spec):
        # in an http(s) URL '?' starts the query string (a signed URL's signature), not a pattern
        scheme = spec.split("://", 1)[0].lower()
        return bool(_MAGIC.search(spec.split("?", 1)[0] if scheme in ("http", "https") else spec))
    return bool(_MAGIC.search(spec)) and not Path(spec).expanduser().exists()


def _video_suffixes() -> tuple[str, ...]:
    """Imported when needed: segbatch.sources.video loads numpy, and the CLI imports this module before --help."""
    from segbatch.sources.video import VIDEO_SUFFIXES

    return VIDEO_SUFFIXES


def location_digest(text: str) -> str:
    """8 hex digits of a location's text: what tells apart inputs whose names would clash (stable across processes)."""
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _named(entries: Sequence[_Entry]) -> list[Input]:
    """Name every entry: the path below the base without its suffix; names that clash keep their suffix, and then add a hash of the location.

    Only the clashing names change, and each step depends on the set of
    entries alone, so adding an unrelated input leaves every other name as it was.
    """
    names = [_name(e, keep_suffix=False) for e in entries]
    for i in _clashing(names):
        names[i] = _name(entries[i], keep_suffix=True)
    for i in _clashing(names):
        names[i] = f"{names[i]}-{location_digest(str(entries[i].location))}"
    return [Input(name, e.location, e.kind) for name, e in zip(names, entries)]


def _name(entry: _Entry, keep_suffix: bool) -> str:
    parts = [p for p in entry.parts if p]
    if entry.has_suffix and not keep_suffix and parts:
        last = parts[-1]
        suffix = Path(last).suffix
        if suffix and len(suffix) < len(last):
            parts[-1] = last[: -len(suffix)]
    return sanitize_name("--".join(parts))


def _clashing(names: Sequence[str]) -> list[int]:
    """Indices of names that another name equals, case folded (object stores and macOS fold case)."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return [i for i, name in enumerate(names) if counts[name.lower()] > 1]


def _refuse_mixed(spec: str, entries: Iterable[_Entry]) -> None:
    first: dict[str, _Entry] = {}
    for entry in entries:
        first.setdefault(entry.kind, entry)
    if len(first) > 1:
        examples = " and ".join(f"{KINDS[kind].plural} ({first[kind].location})" for kind in sorted(first, key=list(KINDS).index))
        raise InputError(f"{spec}: mixes {examples}; a job takes one kind: give each kind its own job")


# --- folders ---


@dataclass(frozen=True)
class _Folder:
    """A local folder's media: its videos and rasters (sorted), and whether the rasters are georeferenced (decided only without videos)."""

    root: Path  # absolute
    videos: list[Path]
    rasters: list[Path]
    georeferenced: bool  # False where there are videos or no rasters: then nothing was opened

    @property
    def many(self) -> bool:
        """A folder of videos, or of georeferenced rasters: many inputs (not a folder of plain images, one input)."""
        return bool(self.videos) or self.georeferenced


def _local_folder(spec: str) -> _Folder | None:
    """The scan of the local folder `spec` names: one walk, and at most one raster opened; None for a URL or what is not a folder."""
    if location.is_url(spec):
        return None
    root = Path(os.path.abspath(Path(spec).expanduser()))
    return _scan(root) if root.is_dir() else None


def _scan(root: Path) -> _Folder:
    videos, rasters = _scan_folder(root)
    return _Folder(root, videos, rasters, not videos and bool(rasters) and _georeferenced(rasters))


def _scan_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """The videos and the rasters (FOLDER_RASTER_SUFFIXES) under `root`, nested folders too (not symlinked ones), hidden files and folders skipped."""
    video_suffixes = _video_suffixes()
    videos: list[str] = []
    rasters: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            if file.startswith("."):
                continue
            suffix = Path(file).suffix.lower()
            if suffix in video_suffixes:
                videos.append(os.path.join(folder, file))
            elif suffix in FOLDER_RASTER_SUFFIXES:
                rasters.append(os.path.join(folder, file))
    return [Path(p) for p in unique_places(videos)], [Path(p) for p in unique_places(rasters)]  # a symlink to a file listed already is no other input


def _georeferenced(rasters: Sequence[Path]) -> bool:
    """Whether the first raster that opens (sorted) has a CRS, a geotransform, GCPs or RPCs.

    That tells a folder of GeoTIFFs (many raster inputs) from an image dataset
    saved as plain TIFFs (one image-folder input): rasterio gives a plain TIFF
    an identity transform. One file decides, so a large folder costs one open.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    for path in rasters:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as ds:
                    return ds.crs is not None or not ds.transform.is_identity or bool(ds.gcps[0]) or ds.rpcs is not None
        except RasterioError:
            continue  # an unreadable file says nothing; the next one does
    return False


def _from_folder(spec: str, folder: _Folder | None) -> list[_Entry]:
    """A folder's inputs; `folder`: its scan where made already (else this scans it)."""
    if folder is None:
        if location.is_url(spec):
            raise InputError(f"{spec}: a URL names many inputs as a glob (s3://bucket/folder/**/*.tif) or in a @manifest, not as a folder")
        root = Path(os.path.abspath(Path(spec).expanduser()))
        if not root.exists():
            raise InputError(f"{spec}: no such file or folder")
        if not root.is_dir():
            raise InputError(f"{spec}: names one input; many inputs are a folder, a glob, a @manifest or a STAC .json")
        folder = _scan(root)
    videos, rasters = folder.videos, folder.rasters
    if videos and rasters:
        raise InputError(f"{spec}: mixes videos ({videos[0]}) and rasters ({rasters[0]}); a job takes one kind: give each kind its own job")
    if not videos and not rasters:
        raise InputError(f"{spec}: holds no videos or rasters ({', '.join(FOLDER_RASTER_SUFFIXES)})")
    if not videos and not folder.georeferenced:
        raise InputError(f"{spec}: its rasters are not georeferenced ({rasters[0]}): a folder of images is one input, not many")
    kind = "video" if videos else "raster"
    return [_Entry(path, kind, path.relative_to(folder.root).parts) for path in videos or rasters]


# --- globs ---


def _fixed_prefix(pattern: str) -> str:
    """The folders of a glob before its first wildcard: the base its matches are named from."""
    return "/".join(takewhile(lambda part: not _MAGIC.search(part), pattern.split("/")))


def _from_local_glob(spec: str) -> list[_Entry]:
    pattern = os.path.expanduser(spec)
    prefix = _fixed_prefix(pattern)
    base = os.path.abspath(prefix or ("/" if pattern.startswith("/") else "."))
    parts = [part for part in pattern.split("/")[len(prefix.split("/")) if prefix else 0 :] if part]
    parts += [""] if pattern.endswith("/") else []  # "x/*/" matches folders only: no file
    found: dict[str, _Entry] = {}
    for path in unique_places(p for p in _glob_walk(base, parts) if os.path.isfile(p) and location.suffix(p) not in SIDECAR_SUFFIXES):
        found[path] = _Entry(Path(path), source_kind(Path(path)), tuple(Path(os.path.relpath(path, base)).parts))
    if not found:
        raise InputError(f"{spec}: no files match")
    return list(found.values())


def _glob_walk(base: str, parts: Sequence[str]) -> Iterator[str]:
    """What `glob.glob(base/parts..., recursive=True)` matches, as absolute paths, but never walking around a symlink loop.

    As glob, wildcards skip hidden names (unless the pattern's part starts
    with '.') and symlinked folders are followed; unlike it, `**` never enters
    a folder it is already inside (a link to `.` or to a parent), where glob
    walks on until the path is too long and lists every file once per lap.
    """

    def entries(folder: str) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except OSError:  # unreadable, or not a folder: no matches below it, as with glob
            return []

    def walk(folder: str, i: int, inside: frozenset[str]) -> Iterator[str]:
        if i == len(parts):
            yield folder
            return
        part, last = parts[i], i + 1 == len(parts)
        if part == "**":
            yield from walk(folder, i + 1, inside)  # no folder at all
            for name in entries(folder):
                path = os.path.join(folder, name)
                if name.startswith("."):
                    continue
                if os.path.isdir(path):
                    real = os.path.realpath(path)
                    if real not in inside:  # else a loop: this folder is being walked already
                        yield from walk(path, i, inside | {real})
                elif last:
                    yield path
        elif _MAGIC.search(part):
            for name in entries(folder):
                if (part.startswith(".") or not name.startswith(".")) and fnmatch.fnmatch(name, part):
                    yield from walk(os.path.join(folder, name), i + 1, inside)
        elif last or os.path.isdir(os.path.join(folder, part)):
            yield from walk(os.path.join(folder, part), i + 1, inside)

    return walk(base, 0, frozenset({os.path.realpath(base)}))


def unique_places(paths: Iterable[str]) -> list[str]:
    """`paths`, sorted, less those that resolve to a file listed already (through a symlink, or a folder reached twice).

    Each file keeps the spelling that is not itself a link, else its shortest
    (fewest folders, then the first in order), so its group's name is the
    file's own and does not depend on the links around it.
    """
    kept: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: (os.path.islink(p), p.count(os.sep), p)):
        kept.setdefault(location.place(path), path)
    return sorted(kept.values())


def _from_url_glob(spec: str) -> list[_Entry]:
    """Matches of a URL glob through its fsspec filesystem, written with the user's own scheme and prefix (`gcs://` stays `gcs://`)."""
    fs, pattern = location.filesystem(spec)
    prefix = _fixed_prefix(spec).rstrip("/")
    base = location.filesystem(prefix)[1].rstrip("/") + "/"
    try:
        matches: dict[str, dict[str, Any]] = fs.glob(pattern, detail=True)
    except OSError as exc:
        raise InputError(f"{spec}: cannot list ({first_line(exc)})") from None
    entries = []
    for path, info in sorted(matches.items()):
        if info.get("type") != "file" or location.suffix(path) in SIDECAR_SUFFIXES:
            continue
        relative = path[len(base) :] if path.startswith(base) else path.lstrip("/")
        url = f"{prefix}/{relative}" if path.startswith(base) else str(fs.unstrip_protocol(path))
        parts = tuple(relative.split("/"))
        if not any(part.startswith(".") for part in parts):  # as local globs skip hidden files
            entries.append(_Entry(url, source_kind(url), parts))
    if not entries:
        raise InputError(f"{spec}: no files match")
    return entries


# --- manifests ---


def _read_spec_file(spec: str, shown: str, what: str) -> tuple[Location, bytes]:
    """Where the manifest or STAC file `spec` names is (a local path made absolute, a URL as given), and its bytes.

    InputError naming it as `shown` when it is missing or unreadable; `what`
    is what those messages call it ("manifest"), "" for a plain file.
    """
    where = location.parse(spec)
    where = where if isinstance(where, str) else Path(os.path.abspath(where.expanduser()))
    try:
        return where, location.read_bytes(where)
    except FileNotFoundError:
        raise InputError(f"{shown}: no such {what or 'file'}") from None
    except OSError as exc:
        raise InputError(f"{shown}: cannot read{f' the {what}' if what else ''} ({exc.strerror or type(exc).__name__})") from None


def _from_manifest(spec: str) -> list[_Entry]:
    """One input a line of a text file; relative paths are relative to the manifest's folder, so the list travels with its files."""
    if not spec:
        raise InputError("@: name the manifest after the @ (@inputs.txt)")
    where, data = _read_spec_file(spec, f"@{spec}", "manifest")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"@{spec}: a manifest is a text file (UTF-8), one path or URL a line") from None
    entries: list[tuple[Location, str]] = []
    seen: dict[str, int] = {}
    itself = location.place(where)
    for number, line in enumerate(text.splitlines(), 1):
        entry = _COMMENT.sub("", line).strip()
        if not entry or entry.startswith("#"):
            continue
        loc = _manifest_entry(where, entry)
        if not location.is_url(loc) and Path(loc).is_dir():
            raise InputError(f"@{spec}: line {number} names a folder ({entry}); a manifest lists files, one input a line")
        key = location.place(loc)  # two spellings of one file are one input
        if key == itself:
            raise InputError(f"@{spec}: line {number} names the manifest itself ({entry}); a manifest lists the inputs, one a line")
        if key in seen:
            raise InputError(f"@{spec}: {entry} is listed twice (lines {seen[key]} and {number})")
        seen[key] = number
        entries.append((loc, entry))
    if not entries:
        raise InputError(f"@{spec}: lists no inputs")
    components = [_components(loc) for loc, _ in entries]
    common = _common_prefix([c[:-1] for c in components])
    return [_Entry(loc, source_kind(loc), tuple(c[common:])) for (loc, _), c in zip(entries, components)]


def _manifest_entry(manifest: Location, entry: str) -> Location:
    if location.is_url(entry):
        return entry
    if isinstance(manifest, str) and not entry.startswith(("/", "~")):
        scheme, rest = manifest.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), entry))}"
    path = Path(entry).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else Path(manifest).parent / path))


def _components(loc: Location) -> list[str]:
    """A location split into folders and file name: a path's parts below its root, a URL's text split at '/'."""
    return str(loc).split("/") if location.is_url(loc) else list(Path(loc).parts[1:])


def _common_prefix(folders: Sequence[Sequence[str]]) -> int:
    """How many leading components all `folders` share: the longest common folder of a manifest's entries."""
    shortest = min(len(f) for f in folders)
    for i in range(shortest):
        if len({f[i] for f in folders}) > 1:
            return i
    return shortest


# --- STAC ---


def _from_stac(spec: str, asset: str | None) -> list[_Entry]:
    """One input per STAC item: its `asset`'s href made absolute against the JSON file, named by the item's id."""
    where, raw = _read_spec_file(spec, spec, "")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{spec}: not JSON; a .json input is read as a STAC Item or ItemCollection") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in ("Feature", "FeatureCollection"):
        raise InputError(f"{spec}: not a STAC Item or ItemCollection (its type is {kind!r}, not 'Feature' or 'FeatureCollection')")
    import pystac
    from pystac.utils import make_absolute_href

    try:
        items = [pystac.Item.from_dict(data)] if kind == "Feature" else list(pystac.ItemCollection.from_dict(data).items)
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{spec}: not a valid STAC {'Item' if kind == 'Feature' else 'ItemCollection'} ({first_line(exc)})") from None
    if not items:
        raise InputError(f"{spec}: the ItemCollection holds no items")
    if asset is None:
        raise InputError(f"{spec}: a STAC file needs --asset KEY, the asset each item is read from (item {items[0].id} has: {_keys(items[0])})")
    entries: list[_Entry] = []
    seen: dict[str, str] = {}
    for item in items:
        found = item.assets.get(asset)
        if found is None:
            raise InputError(f"{spec}: item {item.id} has no asset {asset!r} (its assets: {_keys(item)})")
        href = make_absolute_href(found.href, start_href=str(where))
        if href in seen:
            raise InputError(f"{spec}: items {seen[href]} and {item.id} both read {href}")
        seen[href] = item.id
        loc = location.parse(href)
        video = (found.media_type or "").startswith("video/") or location.suffix(loc) in _video_suffixes()
        entries.append(_Entry(loc, "video" if video else "raster", (item.id,), has_suffix=False))
    return entries


def _keys(item: Any) -> str:
    return ", ".join(item.assets) or "none"


def one_input(path: Location) -> Input:
    """The one input an --input names when it names no job (`segbatch.kinds.kind_of`); its name is "": a run of one input
    writes the store itself, no group."""
    return Input("", path, kind_of(path))
