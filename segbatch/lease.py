"""One run owns a store: a lease with a heartbeat, and a fence every write of the run passes.

Object stores have no locks, so ownership is a small object in the store
(`lease/zarr.json`, an empty Zarr group whose attributes hold run id, host,
pid, started and heartbeat, so Zarr readers see a group, not a stray file),
replaced whole on every renewal. The driver renews it every HEARTBEAT_S seconds; a run
that finds another run's lease refuses to touch the store unless that lease is
provably dead (same host, process gone) or stale (not renewed for
STALE_AFTER_S). Workers check the lease before every chunk and ledger entry
(the fence): once the lease names another run, or their own run has not
renewed it for FENCE_AFTER_S (less than STALE_AFTER_S, so they stop before
anyone can take over), they write nothing more. Heartbeats are wall-clock
times: hosts sharing a store are assumed to keep their clocks in step (NTP).

The lease is taken before anything is written or deleted, a new store's
included: the claim makes the store's folder with nothing in it but the
lease, so a second run (another `run`, an `--overwrite`, a `--resume`) finds
it held however early it comes; the store is then built in place, its root
attributes saying "creating" until it is whole. On a local or shared file
system (a path, or a file:// URL) every change of the lease (claim, renewal, take-over, release) reads,
decides and replaces it while holding an exclusive lock (`exclusive`),
so of two runs at the same moment exactly one wins. Object stores have no
locks; an S3-protocol bucket that honours conditional writes (AWS S3, MinIO,
R2, ...: probed once per bucket, `conditional_writes`) gets the same
compare-and-swap from them: a claim creates the lease only if it is absent
(If-None-Match: *), a renewal, take-over or release replaces it only if it
is still the version this run read or wrote (If-Match: its ETag), and a
write that finds another run's version is refused (HTTP 412). Elsewhere a
claim is written and read back CLAIM_SETTLE_S later (`segbatch info` says so).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from segbatch import location
from segbatch.errors import InputError, RunError, StoreBusyError, first_line
from segbatch.location import Location

LEASE_GROUP = "lease"  # the group that holds the lease (and, on file systems, its lock)
LEASE_KEY = f"{LEASE_GROUP}/zarr.json"
LOCK_KEY = "lease/lock/zarr.json"  # on file systems: locked while the lease is read and replaced (see `exclusive`)
_EMPTY_GROUP = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
HEARTBEAT_S = 5.0
FENCE_AFTER_S = 20.0  # a worker stops writing when its run's heartbeat is this old (its driver is gone or stuck)
STALE_AFTER_S = 45.0  # another run may take the store over when the heartbeat is this old
CLAIM_SETTLE_S = 0.3  # after writing a claim, read it back this much later: a concurrent claimer's write wins or loses visibly
# object stores: a worker's fence reads the lease at most this often before its chunks (a GET each) and afresh before every
# ledger entry; a run that takes a store over waits this long, and a margin, before it writes anything, so no worker of the
# run it replaced still acts on a read of the old lease by then
FENCE_CACHE_S = 2.0
TAKE_OVER_MARGIN_S = 0.5


class LeaseLostError(RunError):
    """The run no longer owns its store (another run took it over): its writes stop."""


@dataclass(frozen=True)
class Lease:
    """Who owns a store now."""

    run: str
    host: str
    pid: int
    started: float  # seconds since the epoch
    heartbeat: float
    pid_started: str | None = None  # the process's start time on its host: a reused pid is not the holder
    released: bool = False  # the run ended and let the store go (the lease stays, so Zarr's metadata never names a missing group)
    guard: str | None = None  # object stores: how the lease is changed, "conditional" writes or "read-back" (file systems: a lock)

    @staticmethod
    def new() -> Lease:
        now = time.time()
        return Lease(uuid.uuid4().hex[:16], socket.gethostname(), os.getpid(), now, now, _process_start(os.getpid()))

    def holder(self) -> str:
        """The holder for a message: run, host, pid, since."""
        since = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"run {self.run} on host {self.host} (pid {self.pid}, since {since})"

    def age(self) -> float:
        """Seconds since the last heartbeat."""
        return time.time() - self.heartbeat

    def dead(self) -> bool:
        """Provably gone: on this host, its process no longer exists (or the pid now belongs to another process)."""
        if self.host != socket.gethostname():
            return False
        if not _pid_exists(self.pid):
            return True
        return self.pid_started is not None and _process_start(self.pid) not in (None, self.pid_started)

    def stale(self) -> bool:
        return self.dead() or self.age() > STALE_AFTER_S


def read_lease(store: Location) -> Lease | None:
    """The store's lease, or None when it has none (never leased, released, or unreadable)."""
    try:
        if location.on_disk(store) is not None:
            raw = location.read_bytes(_lease_location(store))
        else:  # one GET, never an answer from a listing cached before the lease was made or replaced
            fs, path = location.filesystem(str(_lease_location(store)))
            raw = fs.cat_file(path)
    except (OSError, InputError):  # missing, or a URL whose backend is not installed
        return None
    return _parse(raw)


def write_lease(store: Location, lease: Lease) -> None:
    """Replace the lease whole (a rename on a file system, one PUT on an object store)."""
    data = _lease_bytes(lease)
    disk = location.on_disk(store)
    if disk is None:
        fs, path = location.filesystem(str(_lease_location(store)))
        fs.pipe_file(path, data)
        return
    target = disk / LEASE_KEY  # file:// stores too: fsspec writes a file in place, and a reader could see it half written
    target.parent.mkdir(exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    os.replace(tmp, target)


class _Conflict(Exception):
    """A conditional write found the lease object changed (or, creating it, present): another run's write came first."""


_CONDITIONAL: dict[str, bool] = {}  # bucket (endpoint included) -> whether it honours conditional writes, probed once
_CONDITIONAL_LOCK = threading.Lock()


def conditional_writes(store: Location) -> bool:
    """Whether `store`'s lease is changed by conditional writes: an s3:// store whose bucket honours If-None-Match.

    Probed once per bucket: a probe object is created twice with
    If-None-Match: *; a backend that lets the second write through ignores
    the condition, and its stores fall back to claim-and-read-back.
    """
    if not location.via_obstore(store):
        return False
    key = f"{location.s3_endpoint()} {str(store).split('://', 1)[1].split('/', 1)[0]}"  # the endpoint and the bucket
    with _CONDITIONAL_LOCK:
        if key not in _CONDITIONAL:
            # beside the store, not in it: a run checking the store's prefix for other files meanwhile must not see the probe
            probe = f"{str(store).rstrip('/').rsplit('/', 1)[0]}/.segbatch-probe-{uuid.uuid4().hex[:12]}"
            try:
                _put(probe, b"", None)
                try:
                    _put(probe, b"", None)
                    _CONDITIONAL[key] = False
                except _Conflict:
                    _CONDITIONAL[key] = True
            except OSError:  # no right to write there, say: the claim itself fails in one line later
                return False
            finally:
                _delete(probe)
        return _CONDITIONAL[key]


def _put(url: str, data: bytes, etag: str | None) -> str:
    """One PUT of `url`: only if absent (`etag` None) or only if its ETag is still `etag`; returns the new ETag."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError

    store, key = location.object_store(url)
    try:
        return str(obstore.put(store, key, data, mode="create" if etag is None else {"e_tag": etag})["e_tag"])
    except (AlreadyExistsError, PreconditionError) as exc:  # present, changed, or gone since `etag`
        raise _Conflict(type(exc).__name__) from None
    except BaseError as exc:
        raise OSError(f"{location.redact(url)}: {first_line(exc)}") from None


def _get(url: str) -> tuple[bytes, str] | None:
    """The object's bytes and ETag, read in one request (None when absent)."""
    import obstore
    from obstore.exceptions import BaseError, NotFoundError

    store, key = location.object_store(url)
    try:
        got = obstore.get(store, key)
        return bytes(got.bytes()), str(got.meta["e_tag"])
    except (FileNotFoundError, NotFoundError):
        return None
    except BaseError as exc:
        raise OSError(f"{location.redact(url)}: {first_line(exc)}") from None


def _delete(url: str) -> None:
    import obstore
    from obstore.exceptions import BaseError

    store, key = location.object_store(url)
    try:
        obstore.delete(store, key)
    except BaseError:
        pass


def _lease_bytes(lease: Lease) -> bytes:
    fields = {k: v for k, v in asdict(lease).items() if not (k == "guard" and v is None)}  # a file system's lease is as it was
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"segbatch_lease": fields}}, sort_keys=True).encode()


def _parse(raw: bytes) -> Lease | None:
    try:
        fields = json.loads(raw)["attributes"]["segbatch_lease"]
        held = Lease(
            **{k: fields[k] for k in ("run", "host", "pid", "started", "heartbeat")},
            pid_started=fields.get("pid_started"),
            released=fields.get("released", False),
            guard=fields.get("guard"),
        )
    except (ValueError, KeyError, TypeError):
        return None  # a torn or hand-edited lease owns nothing
    # each field of its own type, or the lease owns nothing: a heartbeat "now" (or NaN, never stale) would break every use of it
    times_ok = all(type(t) in (int, float) and float("-inf") < t < float("inf") for t in (held.started, held.heartbeat))
    kinds_ok = isinstance(held.run, str) and isinstance(held.host, str) and type(held.pid) is int and isinstance(held.released, bool)
    optional_ok = all(isinstance(v, (str, type(None))) for v in (held.pid_started, held.guard))
    return held if times_ok and kinds_ok and optional_ok else None


def refuse_if_held(store: Location, mine: Lease) -> Lease | None:
    """Before a run touches `store`: refuse while another run holds it; return a dead or stale lease to take over."""
    return _refuse(store, read_lease(store), mine)


def _refuse(store: Location, held: Lease | None, mine: Lease) -> Lease | None:
    if held is None or held.released or held.run == mine.run:
        return None
    if not held.stale():
        doing = "being created" if not built(store) else "in use"
        raise StoreBusyError(
            f"{store} is {doing} by {held.holder()}, heartbeat {held.age():.0f} s ago; wait for it to end or stop it "
            f"(a lease not renewed for {STALE_AFTER_S:.0f} s is taken over)"
        )
    return held


def built(store: Location) -> bool:
    """Whether the store's root group exists (a folder holding only a lease is a store still being created, or never made)."""
    return location.exists(f"{str(store).rstrip('/')}/zarr.json" if location.is_url(store) else Path(store) / "zarr.json")


@contextmanager
def exclusive(store: Location, create: bool = False) -> Iterator[None]:
    """The store's lease changes one at a time: on a file system, an exclusive lock for the block, so reading the lease, deciding
    and replacing it is one step (`create`: the claim of a new store may make its folder). Object stores have no lock: nothing
    here (their claims are read back).

    The lock is taken on `lease/lock/zarr.json`, an empty group's metadata
    that is never replaced (the lease itself is replaced whole on every
    renewal, so a lock on it would hold an old file), and a valid Zarr node,
    so Zarr tools walking the store see a group, not a stray file.
    """
    disk = location.on_disk(store)
    if disk is None:
        yield
        return
    import fcntl

    lock = disk / LOCK_KEY
    try:
        if not disk.is_dir() and not create:
            raise FileNotFoundError(errno.ENOENT, "no such store")
        if not lock.exists():
            lock.parent.mkdir(parents=True, exist_ok=True)
            tmp = lock.parent / f".{lock.name}.{uuid.uuid4().hex[:8]}"
            tmp.write_bytes(_EMPTY_GROUP)
            try:
                os.link(tmp, lock)  # whole or absent: never an empty file that a Zarr reader would choke on
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        fd = os.open(lock, os.O_RDWR)
    except NotADirectoryError:
        raise InputError(f"{store} is a file, not a store") from None
    except OSError as exc:
        raise InputError(f"cannot take {store} for this run: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim(store: Location, mine: Lease) -> Lease | None:
    """Take the store's lease for this run (see `_claim`); returns the dead or stale lease it replaced, if any."""
    return _claim(store, mine)[0]


def _claim(store: Location, mine: Lease) -> tuple[Lease | None, str | None]:
    """Take the store's lease for this run, before anything is written or deleted, whether the store exists yet or not;
    returns the dead or stale lease it replaced (to warn about), if any.

    On a file system the lease is read and written under `exclusive`: of two
    runs claiming at once, the second finds the first's live lease and is
    refused. On a bucket with conditional writes the lease is created only if
    absent, or replaced only if it is still the version read: of two claimers
    one write lands and the other gets a 412 and is refused; the ETag this
    run wrote comes back with the previous lease (None elsewhere). On other
    object stores the claim is written, then read back after CLAIM_SETTLE_S:
    the one whose write landed last owns the store and the other is refused
    (and any writes it still tried would be fenced).
    """
    if conditional_writes(store):
        url = str(_lease_location(store))
        found = _get(url)
        previous = _refuse(store, None if found is None else _parse(found[0]), mine)
        try:
            lease = replace(mine, heartbeat=time.time(), guard="conditional")
            return previous, _put(url, _lease_bytes(lease), None if found is None else found[1])
        except _Conflict:
            now = read_lease(store)
            raise StoreBusyError(f"{store} was claimed by {now.holder() if now else 'another run'} at the same time; try again once it ends") from None
    with exclusive(store, create=True):
        previous = refuse_if_held(store, mine)
        write_lease(store, replace(mine, heartbeat=time.time(), guard=None if location.on_disk(store) is not None else "read-back"))
    if location.on_disk(store) is None:
        time.sleep(CLAIM_SETTLE_S)
        now = read_lease(store)
        if now is None or now.run != mine.run:
            raise StoreBusyError(f"{store} was claimed by {now.holder() if now else 'another run'} at the same time; try again once it ends")
    return previous, None


_fence_reads: dict[tuple[str, str], tuple[float, Lease | None]] = {}  # per worker process: (store, run) -> (when, the lease read)


def check_fence(store: Location, run: str, fresh: bool = False) -> None:
    """Worker side, before every chunk and ledger entry: this run must still own the store, and its driver must be alive.

    On a file system every check reads the lease. On an object store a check
    before a chunk may use a read younger than FENCE_CACHE_S (one GET per
    unit and a few seconds, not per chunk); `fresh` (before a ledger entry)
    always reads. A take-over waits FENCE_CACHE_S before it writes, and a
    stale lease is taken over only long after its workers stopped
    (FENCE_AFTER_S < STALE_AFTER_S), so the cache lets no write land after
    another run took the store.
    """
    held = _fence_read(store, run, fresh)
    if held is None:
        raise LeaseLostError(f"{store} has no lease any more (removed or replaced by another run); this run writes nothing more to it")
    if held.run != run or held.released:
        raise LeaseLostError(f"{store} now belongs to {held.holder()}; this run writes nothing more to it")
    if held.age() > FENCE_AFTER_S:
        raise LeaseLostError(f"this run's driver has not renewed its lease on {store} for {held.age():.0f} s; its workers stop writing")


def _fence_read(store: Location, run: str, fresh: bool) -> Lease | None:
    if location.on_disk(store) is not None:
        return read_lease(store)
    key, now = (str(store), run), time.monotonic()
    cached = None if fresh else _fence_reads.get(key)
    if cached is not None and now - cached[0] < FENCE_CACHE_S:
        return cached[1]
    held = read_lease(store)
    _fence_reads[key] = (now, held)
    return held


class LeaseKeeper:
    """A run's hold on the store it writes: claimed on entry (see `claim`), renewed every HEARTBEAT_S, let go on exit.

    A renewal that finds another run's lease stops renewing and marks the
    run lost: `check()` then raises, so the driver writes no more attributes.
    On exit a store that was built is released; a claim that never became a
    store (the run was refused or stopped before building it) is removed,
    with the folder the claim made.
    """

    def __init__(self, store: Location, lease: Lease) -> None:
        self.store, self.lease = store, lease
        self.lost: Lease | None = None
        self.previous: Lease | None = None  # the dead or stale lease this run took over
        self.etag: str | None = None  # the version of the lease this run wrote last, where the store's writes are conditional
        self.lock = threading.Lock()  # one renewal at a time (the thread's, or the driver's own)
        self._made = False  # the claim made the store's folder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="segbatch-lease", daemon=True)

    def __enter__(self) -> Self:
        self._made = not location.exists(self.store)
        self.previous, self.etag = _claim(self.store, self.lease)
        guard = "conditional" if self.etag is not None else None if location.on_disk(self.store) is not None else "read-back"
        self.lease = replace(self.lease, guard=guard)  # renewals keep saying how the lease is guarded
        if self.previous is not None and location.on_disk(self.store) is None:
            time.sleep(FENCE_CACHE_S + TAKE_OVER_MARGIN_S)  # the replaced run's workers see this lease before this run writes
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self.lock, exclusive(self.store):
                held = read_lease(self.store)
                if held is None or held.run != self.lease.run:
                    return
                if built(self.store):
                    self._write(replace(self.lease, heartbeat=time.time(), released=True))
                    return
            self._remove_claim()
        except (InputError, OSError, _Conflict):  # the store went away, cannot be written, or another run took it: nothing to let go of
            return

    def _remove_claim(self) -> None:
        """The claim of a store never built: the folder it made, or only the lease in a folder that was there before."""
        disk = location.on_disk(self.store)
        if disk is None:
            location.remove_tree(self.store if self._made else f"{str(self.store).rstrip('/')}/{LEASE_GROUP}")
            return
        import shutil

        shutil.rmtree(disk if self._made else disk / LEASE_GROUP, ignore_errors=True)

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLostError(f"{self.store} was taken over by {self.lost.holder()}; this run stops without writing more")

    def renew(self) -> None:
        """One heartbeat (the thread's step; also called directly where a driver wants a fresh lease now)."""
        with self.lock, exclusive(self.store):
            if self.lost is not None:
                return
            if self.etag is None:
                held = read_lease(self.store)
                if held is not None and held.run != self.lease.run:
                    self.lost = held
                    return
            try:
                self._write(replace(self.lease, heartbeat=time.time()))
            except _Conflict:  # replaced by another run since this run wrote it (or removed)
                self.lost = read_lease(self.store) or replace(self.lease, run="unknown (the lease was removed)", released=True)

    def _write(self, lease: Lease) -> None:
        """Replace the lease: only if it is still the version this run wrote where writes are conditional (`_Conflict` if not)."""
        if self.etag is None:
            write_lease(self.store, lease)
            return
        self.etag = _put(str(_lease_location(self.store)), _lease_bytes(lease), self.etag)  # gone or changed: _Conflict

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.renew()
            except Exception:  # a failed renewal (network blip) is retried at the next beat; workers fence on the age
                continue


def describe_lease(store: Location) -> dict[str, Any] | None:
    """For `segbatch info`: the lease as it stands, and whether it is live."""
    held = read_lease(store)
    if held is None:
        return None
    return {**asdict(held), "heartbeat_age_s": round(held.age(), 1), "live": not (held.released or held.stale())}


def _lease_location(store: Location) -> str | Path:
    return f"{str(store).rstrip('/')}/{LEASE_KEY}" if location.is_url(store) else Path(store) / LEASE_KEY


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), with the boot id; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"
