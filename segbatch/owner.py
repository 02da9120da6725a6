"""The one way to write a store: through the holder of its root's lease (driver) or the run's fence (workers).

Every write a run makes (creating a store or a job's root, its groups,
emptying it for --overwrite, reopening it for --resume, stitching,
repairing, marking it after `verify`) opens its store or group here, so no
code path writes without holding the lease of the root being written:
tests/test_write_guard.py searches the package and fails on any other
write-mode open.

`Owner` is the driver's: a `LeaseKeeper` on the root (claimed on entry,
renewed, let go on exit) whose every opening for writing checks first that
the lease is still this run's. `Fence` is what workers and stitch tasks
carry: the root whose lease fences them and the run; `open` hands them a
group to write into, `check` goes before every chunk and ledger entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from segbatch import location
from segbatch.lease import LeaseKeeper, check_fence
from segbatch.location import Location

if TYPE_CHECKING:
    from zarr import Group

T = TypeVar("T")


class Owner(LeaseKeeper):
    """A run's hold on a store's root; everything it writes under that root is opened through it."""

    @property
    def run(self) -> str:
        return self.lease.run

    def fence(self) -> Fence:
        """What the run's workers carry to write under this root."""
        return Fence(location.absolute(self.store), self.lease.run)

    def open(self, at: Location | None = None) -> Group:
        """The root (or a group under it, `at`) open for writing, as it is now that this run holds it."""
        from segbatch.store import open_store

        self.check()
        root: Group = open_store(self._inside(at), mode="r+")
        return root

    def create(self, layout: Any, attrs: dict[str, Any], at: Location | None = None, group: bool = False, consolidated: bool = True) -> Group:
        """A new store at the root (or a job's group at `at`): see segbatch.store.create_store."""
        from segbatch.store import create_store

        self.check()
        root: Group = create_store(self._inside(at), layout, attrs, group=group, consolidated=consolidated)
        return root

    def replace(self, create: Callable[[], T]) -> T:
        """--overwrite (or a new store): empty the folder this run holds (all but its lease), then `create` in it."""
        from segbatch.store import clear_store

        self.check()
        clear_store(self.store)
        return create()

    def create_job(self, attrs: dict[str, Any]) -> Group:
        """A job store's root group (segbatch.jobstore)."""
        from segbatch.jobstore import create_job_root

        self.check()
        root: Group = create_job_root(self.store, attrs)
        return root

    def reopen(self, config: dict[str, Any], at: Location | None = None) -> tuple[Any, dict[str, Any]]:
        """--resume of the root (or a job's group): checked against `config`, marked as this run's."""
        from segbatch.store import reopen_for_resume

        self.check()
        return reopen_for_resume(self._inside(at), config, self.lease.run)

    def _inside(self, at: Location | None) -> Location:
        if at is None:
            return self.store
        if not location.inside(at, self.store):
            raise ValueError(f"{at} is not under {self.store}, whose lease this run holds")
        return at


@dataclass(frozen=True)
class Fence:
    """Worker side: the root whose lease fences the run's writes, and the run; picklable, sent with the run's job."""

    lease: str  # the root holding the lease (a job's root for its groups)
    run: str

    def check(self, fresh: bool = False) -> None:
        """Before every chunk (and, `fresh`, every ledger entry): this run still owns the root and its driver is alive."""
        check_fence(self.lease, self.run, fresh)

    def open(self, store: str) -> Group:
        """A store or group under the fenced root, open for writing (the fence is checked before each write, not here)."""
        from segbatch.store import open_store

        root: Group = open_store(store, mode="r+")
        return root
