"""Where inputs, checkpoints and stores live: a local (or shared) path, or an fsspec URL every node can reach.

A location is a `Path` for local files and a `str` for URLs (`s3://`,
`gs://`, `az://`, `https://`, `file://`, ...). `s3://` goes through
obstore (Rust's object_store: the Zarr store, the lease's conditional puts,
listings and the file objects videos are read through, one client; chosen on
figures, benchmarks/object_clients.py); other schemes pick their fsspec
filesystem, whose package (gcsfs, adlfs) must be installed on every node.
Rasters are read through GDAL's virtual file systems (/vsis3/, /vsigs/,
...), videos through a file object that PyAV reads.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from segbatch.errors import InputError

if TYPE_CHECKING:
    from obstore.store import ClientConfig

Location = Path | str

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")  # scheme://user:password@host
# an http(s) URL's query: a signed URL's ?X-Amz-Signature=..., an Azure SAS token (other schemes' keys may hold a "?")
_QUERY = re.compile(r"\b(https?://[^\s?#]*)[?#][^\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL's credentials and query string left out: what may be written into a store, a report or a message.

    A signed URL's signature, a SAS token or a user:password@ never leave the
    process that was given them; the object's location (scheme, host, path)
    stays.
    """
    return _QUERY.sub(r"\1", _USERINFO.sub(r"\1", text))


_GDAL_PREFIX = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/"}


def is_url(location: Location | str) -> bool:
    return isinstance(location, str) and bool(_URL.match(location))


def parse(value: str | Path) -> Location:
    """A command-line value as a location: URLs stay strings (a Path would fold their '//'), the rest are paths (`~` expanded)."""
    return value if is_url(value) else Path(value).expanduser()


def absolute(location: Location) -> str:
    """The form workers on other nodes can use: a URL as given, a path made absolute."""
    return str(location) if is_url(location) else str(Path(location).expanduser().resolve())


def local_path(value: str) -> str:
    """A local path as typed, or as a file:// URL (file:///data/x.tif, file://localhost/data/x.tif), with `~` expanded."""
    from urllib.parse import unquote

    if is_url(value) and value.split("://", 1)[0].lower() in ("file", "local"):
        rest = value.split("://", 1)[1]
        value = unquote(rest[len("localhost") :] if rest.startswith("localhost/") else rest)
    return os.path.expanduser(value)


def on_disk(location: Location) -> Path | None:
    """The local (or shared) file system path a location names: a path, or a file:// URL; None for other URLs."""
    if not is_url(location):
        return Path(location)
    if str(location).split("://", 1)[0].lower() in ("file", "local"):
        return Path(local_path(str(location)))
    return None


# one scheme for each spelling of the same storage (Hadoop's s3a://, gcsfs's gcs://, adlfs's abfs[s]://)
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "local": "file"}


def place(location: Location) -> str:
    """What a location denotes, as one string: two spellings of the same file or object give the same place.

    Local paths and file:// URLs become the absolute path with `~`, `.`,
    `..` and symlinks resolved (the file need not exist); object-store URLs
    become scheme + bucket + key with the scheme's aliases folded (s3a:// is
    s3://, gcs:// is gs://), repeated and trailing slashes and `.`/`..`
    segments removed. Every check that two locations are, or hold, the same
    file goes through this (never a comparison of the text as typed).
    """
    import posixpath

    if not is_url(location):
        return str(Path(location).expanduser().resolve())
    scheme, rest = str(location).split("://", 1)
    scheme = _SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
    if scheme == "file":
        return str(Path(local_path(str(location))).resolve())
    if scheme in ("http", "https"):
        host, _, path = rest.partition("/")
        return f"{scheme}://{host.lower()}{posixpath.normpath('/' + path) if path else ''}"
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key.strip("/") else ""
    return f"{scheme}://{bucket}/{key}".rstrip("/")


def same(a: Location, b: Location) -> bool:
    """Whether two locations are the same file, folder or object (see `place`)."""
    return place(a) == place(b)


def inside(child: Location, parent: Location) -> bool:
    """Whether `child` is `parent` or lies under it, on normalised locations (see `place`): a file:// URL, a relative path,
    `~`, `..` or a symlink spelling the same place as a plain path is that place."""
    c, p = place(child), place(parent)
    return c == p or c.startswith(p.rstrip("/") + "/")


def name(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def suffix(location: Location) -> str:
    """The file's suffix, lower case; an http(s) URL's query and fragment (a signed URL's ?X-Amz-...) are not part of it."""
    text = str(location)
    if is_url(text) and text.split("://", 1)[0].lower() in ("http", "https"):
        text = text.split("#", 1)[0].split("?", 1)[0]
    return Path(name(text)).suffix.lower()


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options: local files through fsspec create their parent folders (as object stores need no folders)."""
    return {"auto_mkdir": True} if url.split("://", 1)[0] in ("file", "local") else {}


OBSTORE_SCHEMES = ("s3", "s3a")  # reached through obstore


def via_obstore(location: Location) -> bool:
    """Whether `location` is reached through obstore (an s3:// URL)."""
    return is_url(location) and str(location).split("://", 1)[0].lower() in OBSTORE_SCHEMES


def s3_endpoint() -> str:
    """The S3 endpoint the environment names ("" for AWS itself), as obstore and the AWS tools read it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""


def _s3_client_options() -> ClientConfig:
    """obstore's client options: plain http allowed when the endpoint the environment names is http (MinIO, a test server)."""
    return {"allow_http": True} if s3_endpoint().lower().startswith("http://") else {}


def _s3_credentials() -> dict[str, Any]:
    """obstore's own credentials (keys in the environment, an instance's or a pod's role) unless the environment names a
    profile or the user has ~/.aws without keys in the environment: then boto3's, where it is installed (profiles, SSO,
    assumed roles), and the profile's region where none is set."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or not (os.environ.get("AWS_PROFILE") or Path("~/.aws").expanduser().is_dir()):
        return {}
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return {}
    session = boto3.Session()
    if session.get_credentials() is None:
        return {}
    found: dict[str, Any] = {"credential_provider": Boto3CredentialProvider(session)}
    if session.region_name and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        found["region"] = session.region_name
    return found


def _obstore_missing() -> InputError:
    return InputError("s3:// needs the obstore package on every node (pip install 'segbatch[s3]')")


def _configuration() -> tuple[tuple[str, str], ...]:
    """What an S3 client is configured from: the storage variables and the home folder (~/.aws). Clients are kept per
    configuration, so one made before the environment changed is never reused after."""
    return (*sorted(storage_variables().items()), ("HOME", os.environ.get("HOME", "")))


@functools.lru_cache(maxsize=64)
def _s3_store(bucket: str, prefix: str, configuration: tuple[tuple[str, str], ...]) -> Any:
    """One obstore store per bucket, prefix and configuration, kept: its connections are reused (the lease is read every few
    seconds; a new client would open a new TLS connection each time)."""
    try:
        from obstore.store import S3Store
    except ImportError:
        raise _obstore_missing() from None
    return S3Store(bucket, prefix=prefix or None, client_options=_s3_client_options(), **_s3_credentials())


@functools.lru_cache(maxsize=8)
def _s3_filesystem(configuration: tuple[tuple[str, str], ...]) -> Any:
    """obstore's fsspec filesystem for s3://, one per configuration (see _s3_store)."""
    try:
        from obstore.fsspec import FsspecStore
    except ImportError:
        raise _obstore_missing() from None
    return FsspecStore("s3", client_options=_s3_client_options(), **_s3_credentials())


def object_store(url: str, rooted: bool = False) -> tuple[Any, str]:
    """The obstore store of an s3:// URL's bucket (configured from the standard AWS variables) and the key within it; with
    `rooted`, a store whose keys start at the URL's key (what Zarr takes) and ""."""
    bucket, _, key = url.split("://", 1)[1].partition("/")
    key = key.strip("/")
    if rooted:
        return _s3_store(bucket, key, _configuration()), ""
    return _s3_store(bucket, "", _configuration()), key


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the path within it; a missing backend package is a one-line error."""
    import fsspec

    if via_obstore(url):
        return _s3_filesystem(_configuration()), url.split("://", 1)[1]
    try:
        return cast(tuple[Any, str], fsspec.core.url_to_fs(url, **storage_options(url)))
    except ImportError as exc:
        raise InputError(f"{url}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"{url}: not a URL fsspec knows ({exc})") from None


def version(path: str) -> tuple[Any, ...]:
    """A file as it is now, for keeping it open between reads: its path, and, on disk, its inode, size and mtime (so one
    replaced in place is opened again, never read through an old handle)."""
    if not is_url(path):
        try:
            st = os.stat(path)
            return (path, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            pass  # opening it says what is wrong
    return (path,)


def exists(location: Location) -> bool:
    if not is_url(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    return bool(fs.exists(path))


def is_dir(location: Location) -> bool:
    if not is_url(location):
        return Path(location).is_dir()
    fs, path = filesystem(str(location))
    return bool(fs.isdir(path))


def children(location: Location) -> list[str] | None:
    """The names in a folder (or under an object-store prefix): [] when there is nothing there, None when it is a file."""
    if not is_url(location):
        path = Path(location)
        if path.is_dir():
            return [child.name for child in path.iterdir()]
        return None if path.exists() else []
    fs, key = filesystem(str(location))
    key = key.rstrip("/")
    if fs.isfile(key):
        return None
    try:
        return [str(child).rstrip("/").rsplit("/", 1)[-1] for child in fs.ls(key, detail=False)]
    except FileNotFoundError:
        return []


def size(location: Location) -> int:
    if not is_url(location):
        return Path(location).stat().st_size
    fs, path = filesystem(str(location))
    return int(fs.size(path))


def open_binary(location: Location) -> IO[bytes]:
    """A seekable binary file object (fsspec's buffered reader for URLs)."""
    if not is_url(location):
        return Path(location).open("rb")
    fs, path = filesystem(str(location))
    if via_obstore(location) and not fs.isfile(path):
        raise InputError(f"{location}: no such file")  # before open: obstore's reader of a missing object dies noisily
    try:
        return cast(IO[bytes], fs.open(path, "rb"))
    except FileNotFoundError:
        raise InputError(f"{location}: no such file") from None


def read_bytes(location: Location) -> bytes:
    with open_binary(location) as f:
        return f.read()


def remove_tree(location: Location) -> None:
    import shutil

    if not is_url(location):
        shutil.rmtree(location)
        return
    fs, path = filesystem(str(location))
    fs.rm(path, recursive=True)


def gdal_path(location: Location) -> str:
    """What GDAL opens: a local path, or the URL through its virtual file system (/vsis3/bucket/key, /vsicurl/https://...)."""
    if not is_url(location):
        return str(location)
    scheme, rest = str(location).split("://", 1)
    if scheme in ("file", "local"):
        return rest
    if scheme not in _GDAL_PREFIX:
        raise InputError(f"{location}: GDAL reads s3://, gs://, az:// and http(s):// URLs, not {scheme}://")
    return _GDAL_PREFIX[scheme] + (str(location) if scheme in ("http", "https") else rest)


def zarr_store(location: Location, read_only: bool) -> Any:
    """What zarr.open_group takes: a local path, or a store for a URL (obstore's for s3://, fsspec's for others)."""
    if not is_url(location):
        return str(location)
    from zarr.storage import FsspecStore, ObjectStore

    if via_obstore(location):
        return ObjectStore(object_store(str(location), rooted=True)[0], read_only=read_only)
    try:
        return FsspecStore.from_url(str(location), storage_options=storage_options(str(location)), read_only=read_only)
    except ImportError as exc:
        raise InputError(f"{location}: {exc}") from None


STORAGE_VARIABLES = ("AWS_", "AZURE_", "GOOGLE_", "GS_", "GDAL_", "CPL_", "FSSPEC_")  # obstore, boto3, adlfs, gcsfs, GDAL, fsspec


def storage_variables() -> dict[str, str]:
    """The driver's object-storage and GDAL variables (STORAGE_VARIABLES: keys, tokens, endpoint, region, addressing).

    Every actor and stitch task of a run sets them in its own process before
    it reads an input or opens a store (use_variables), so the nodes of a
    cluster, started with environments of their own, reach what the driver
    does; none when the driver has none (nodes with roles of their own). They
    travel inside the run's job object (Ray's object store), not in a Ray
    runtime environment, whose agent writes every variable, values included,
    into each node's runtime_env_agent.log, and which the dashboard shows.
    """
    return {name: value for name, value in os.environ.items() if name.startswith(STORAGE_VARIABLES)}


def use_variables(variables: Mapping[str, str]) -> None:
    """In a worker: the driver's storage variables (storage_variables()) in this process's environment, where obstore, boto3,
    fsspec and GDAL read them."""
    os.environ.update(variables)
