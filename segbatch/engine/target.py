"""Where a run writes, decided in one place: the store's root (one input) or a group per input under a job's root (many).

`own_target` is every run's hold on its root: the target checked, the
lease claimed before anything is written or deleted, checked again once
held; the `Owner` it yields is the only way the run opens anything for
writing (segbatch.owner).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from segbatch import location
from segbatch.engine.job import RunConfig
from segbatch.errors import InputError
from segbatch.jobstore import group_location
from segbatch.lease import LEASE_GROUP, Lease, built
from segbatch.location import Location
from segbatch.owner import Owner
from segbatch.progress import note
from segbatch.store import enclosing_store, open_store


@dataclass(frozen=True)
class Target:
    """The run's root (`--out`), and whether it is a job of many inputs: the one place that decides "root or group"."""

    out: Location
    many: bool

    def store_of(self, name: str) -> Location:
        """Where an input's store is: the root itself for a run of one input, its group under the job's root for many."""
        return group_location(self.out, name) if self.many else self.out


@contextmanager
def own_target(cfg: RunConfig, lease: Lease, checkpoint: Location, inputs: Sequence[Location] | None = None) -> Iterator[Owner]:
    """The run's hold on its store for the block: checked, claimed before anything is written or deleted, renewed, let go.

    The checks run before the claim (a refused run writes nothing) and again
    once the lease is this run's (another run may have made or changed the
    store in between); a live run's store, even one still being created, is
    refused in one line whatever the timing.
    """
    check_target(cfg, checkpoint, inputs)
    with Owner(cfg.out, lease) as owner:
        if owner.previous is not None:
            gone = "is gone" if owner.previous.dead() else f"has not renewed its lease for {owner.previous.age():.0f} s"
            note(f"warning: taking over {cfg.out} from {owner.previous.holder()}, which {gone}")  # even with --quiet: who owned the store matters
        check_target(cfg, checkpoint, inputs)
        yield owner


def check_target(cfg: RunConfig, checkpoint: Location, inputs: Sequence[Location] | None = None) -> None:
    """The store must be new, or be replaced (--overwrite) or finished (--resume), and lie inside no other store.

    The files the job reads (`inputs`: default the run's one input) and its
    checkpoint may not lie inside a store that --overwrite would empty
    (compared as places: `segbatch.location.place`). A folder that holds only
    a lease is a store whose creation never finished (or is going on: the
    claim refuses that).
    """
    enclosing = enclosing_store(cfg.out)
    if enclosing is not None:
        raise InputError(
            f"{cfg.out} lies inside the segbatch store {enclosing}: its groups are written by its own runs only "
            f"(resume a job with `segbatch run --input ... --out {enclosing} --resume`)"
        )
    there = built(cfg.out)
    if there and not (cfg.resume or cfg.overwrite):
        raise InputError(f"{cfg.out} exists; pass --resume to finish it or --overwrite to replace it")
    if there:
        open_store(cfg.out)  # only ever write into (or delete) a store segbatch wrote
    elif _foreign(cfg.out):
        raise InputError(f"{cfg.out} is not a Zarr v3 store (a file, or a folder of other files); choose another --out")
    for what, path in [*(("input", i) for i in (inputs if inputs is not None else [cfg.input])), ("checkpoint", checkpoint)]:
        if cfg.overwrite and location.inside(path, cfg.out):
            raise InputError(f"the {what} {path} is inside {cfg.out}, which --overwrite would delete; move it out first")
    if location.is_url(cfg.out):
        return  # object stores have no folders to check; a missing bucket or credentials fail at creation, in one line
    out = Path(cfg.out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot create {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot create {out}: folder {parent} is not writable")


def _foreign(out: Location) -> bool:
    """A folder (or object-store prefix) that is neither empty nor a (claimed) segbatch store: someone else's data, never
    written into; a file is no store either."""
    names = location.children(out)
    if names is None:
        return location.exists(out)  # a file where the store would go
    keep = LEASE_GROUP
    return any(name != keep for name in names) and keep not in names
