"""The lease on a file system, without Ray: claims are exclusive, replacements are whole, a claim never built is removed."""

import threading
import time

import pytest

from segbatch.errors import StoreBusyError
from segbatch.lease import LEASE_KEY, Lease, LeaseKeeper, claim, read_lease, write_lease


def _race(store, count=2):
    """`count` runs claim `store` at the same moment; returns the winners' and the refused runs' leases."""
    leases = [Lease.new() for _ in range(count)]
    leases = [Lease(f"{lease.run}{i}", lease.host, lease.pid, lease.started, lease.heartbeat, lease.pid_started) for i, lease in enumerate(leases)]
    start = threading.Barrier(count)
    won, refused = [], []

    def one(lease):
        start.wait()
        try:
            claim(store, lease)
            won.append(lease)
        except StoreBusyError:
            refused.append(lease)

    threads = [threading.Thread(target=one, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


@pytest.mark.parametrize("url", [False, True], ids=["path", "file url"])
def test_of_runs_claiming_a_new_store_at_once_exactly_one_wins(tmp_path, url):
    for round_ in range(20):
        path = tmp_path / f"s{round_}.zarr"
        won, refused = _race(f"file://{path}" if url else path, count=3)
        assert len(won) == 1 and len(refused) == 2
        assert read_lease(path).run == won[0].run


def test_of_runs_taking_over_a_stale_lease_at_once_exactly_one_wins(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    for _ in range(20):
        old = time.time() - 600
        write_lease(store, Lease("stale", "elsewhere", 1, old, old))  # another host's run, silent for ten minutes
        won, refused = _race(store)
        assert len(won) == 1 and len(refused) == 1
        assert read_lease(store).run == won[0].run


def test_a_file_url_lease_is_replaced_whole_never_rewritten_in_place(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    first, second = Lease.new(), Lease.new()
    write_lease(f"file://{store}", first)
    with open(store / LEASE_KEY, "rb") as reader:  # a worker reading the lease while the driver renews it
        write_lease(f"file://{store}", second)
        assert first.run in reader.read().decode()  # it read the old lease whole, not a file being written
    assert read_lease(store).run == second.run


def test_a_claim_never_built_is_removed_with_the_folder_it_made_and_a_built_store_released(tmp_path):
    never = tmp_path / "never.zarr"
    with LeaseKeeper(never, Lease.new()):
        assert read_lease(never) is not None and not (never / "zarr.json").exists()
    assert not never.exists()
    there = tmp_path / "there"
    there.mkdir()  # an empty folder the user made: only the claim goes
    with LeaseKeeper(there, Lease.new()):
        pass
    assert there.is_dir() and not any(there.iterdir())
    built = tmp_path / "built.zarr"
    with LeaseKeeper(built, lease := Lease.new()):
        (built / "zarr.json").write_text("{}")
    held = read_lease(built)
    assert held.run == lease.run and held.released


def test_a_renewal_after_a_take_over_loses_the_store(tmp_path):
    store = tmp_path / "s.zarr"
    with LeaseKeeper(store, Lease.new()) as keeper:
        now = time.time()
        write_lease(store, Lease("intruder", "elsewhere", 4242, now, now))
        keeper.renew()
        assert keeper.lost is not None and keeper.lost.run == "intruder"
        with pytest.raises(Exception, match="taken over by run intruder"):
            keeper.check()
    assert read_lease(store).run == "intruder"  # the lost run let nothing go
