"""`segbatch stitch`: blend a raster store's kept tiles again, under the lease of the root that owns it, like any run's writes."""

from __future__ import annotations

from pathlib import Path

from segbatch import location
from segbatch.engine.outcome import RunSummary, finished_or_fail, recorded_outcome
from segbatch.engine.raster import new_stitcher, stitch_store
from segbatch.engine.session import ray_session
from segbatch.errors import InputError
from segbatch.kinds import KINDS, kind
from segbatch.lease import Lease
from segbatch.location import storage_variables
from segbatch.owner import Owner
from segbatch.stitch import StitchJob
from segbatch.store import enclosing_store, read_store, store_attrs
from segbatch.tiling import plan_tiles


def restitch(path: Path | str, quiet: bool, verbose: int = 0, group: str | None = None) -> RunSummary:
    """`segbatch stitch STORE [--group NAME]`: blend a store's kept tiles again (`verbose` >= 2: Ray's own logs on stderr).

    A group of a job store is stitched under the job's lease (its root's), as the job's own writes are.
    """
    from segbatch.jobstore import group_of

    target = group_of(path, group, "stitch")
    root, attrs, _ = read_store(target)  # attributes and ledger checked before the store is claimed
    if not kind(attrs["source"]["kind"]).tiled:
        tiled = " and ".join(k.name for k in KINDS.values() if k.tiled)
        raise InputError(f"{target} is a {attrs['source']['kind']} store; only {tiled} stores are stitched")
    if "tiles" not in root:
        raise InputError(f"{target} has no tiles/ (they are removed after a stitch unless the run had --keep-tiles)")
    owned = enclosing_store(target) or target  # one run owns a store (a job's group: the job's root), not while another holds it
    lease = Lease.new()
    src = attrs["source"]
    tiles = plan_tiles(src["height"], src["width"], src["tile"], src["overlap"])
    job = StitchJob(store=location.absolute(target), tiles=tiles, run=lease.run, lease=location.absolute(owned), environment=storage_variables())
    summary = RunSummary(units=len(job.tiles), noun="tile")
    with Owner(owned, lease) as owner, ray_session(None, verbose):
        root = owner.open(target)  # as it is now that this run holds it
        attrs = store_attrs(root)
        with recorded_outcome(root, len(job.tiles), "tiles"):
            done = finished_or_fail(root, range(len(job.tiles)))
            # every chunk again only from tiles a run kept whole; a run stopped mid-stitch deleted the tiles it had used up,
            # so then only the chunks it had not stitched yet (their tiles are all still there)
            again = bool((attrs.get("summary") or {}).get("tiles_kept"))
            stitcher = new_stitcher(job, root, done, keep_tiles=True, owner=owner, again=again)
            stitch_store(root, stitcher, keep_tiles=True, quiet=quiet, summary=summary, owner=owner)
    return summary
