"""The lease on an S3-protocol bucket (moto's server on 127.0.0.1), without Ray: conditional writes make every change a
compare-and-swap; a bucket that ignores the conditions falls back to claim-and-read-back and says so."""

import time

import pytest

import segbatch.lease as lease_module
from segbatch.errors import StoreBusyError
from segbatch.lease import Lease, LeaseKeeper, LeaseLostError, conditional_writes, read_lease, write_lease
from tests.test_lease import _race


def test_the_loopback_server_honours_conditional_writes(s3_bucket):
    assert conditional_writes(f"{s3_bucket}/a.zarr")


def test_of_runs_claiming_a_new_store_at_once_exactly_one_wins(s3_bucket, monkeypatch):
    monkeypatch.setattr(lease_module, "CLAIM_SETTLE_S", 30.0)  # were the claim read back, this test would take ten minutes
    for round_ in range(20):
        store = f"{s3_bucket}/s{round_}.zarr"
        won, refused = _race(store, count=3)
        assert len(won) == 1 and len(refused) == 2, round_
        held = read_lease(store)
        assert held.run == won[0].run and held.guard == "conditional"


def test_of_runs_taking_over_a_stale_lease_at_once_exactly_one_wins(s3_bucket, monkeypatch):
    monkeypatch.setattr(lease_module, "CLAIM_SETTLE_S", 30.0)
    store = f"{s3_bucket}/s.zarr"
    for round_ in range(20):
        old = time.time() - 600
        write_lease(store, Lease("stale", "elsewhere", 1, old, old))  # another host's run, silent for ten minutes
        won, refused = _race(store)
        assert len(won) == 1 and len(refused) == 1, round_
        assert read_lease(store).run == won[0].run


def test_a_renewal_after_a_take_over_loses_and_the_release_leaves_the_new_lease(s3_bucket):
    store = f"{s3_bucket}/s.zarr"
    with LeaseKeeper(store, Lease.new()) as keeper:
        assert keeper.etag is not None
        keeper.renew()
        keeper.check()  # renewed: still this run's
        intruder = Lease.new()
        write_lease(store, intruder)  # another run's write, whatever it read
        keeper.renew()
        with pytest.raises(LeaseLostError):
            keeper.check()
    assert read_lease(store).run == intruder.run  # letting go replaced nothing


def test_a_bucket_that_ignores_conditions_falls_back_to_read_back_and_info_says_so(s3_bucket, monkeypatch):
    from segbatch.cli.info import _lease_line
    from segbatch.lease import describe_lease

    monkeypatch.setattr(lease_module, "conditional_writes", lambda store: False)
    monkeypatch.setattr(lease_module, "CLAIM_SETTLE_S", 0.05)
    store = f"{s3_bucket}/s.zarr"
    with LeaseKeeper(store, Lease.new()) as keeper:
        assert keeper.etag is None
        assert read_lease(store).guard == "read-back"
        keeper.renew()
        assert read_lease(store).guard == "read-back"  # renewals keep saying so
        assert "no conditional writes" in _lease_line(describe_lease(store))
        with pytest.raises(StoreBusyError):
            LeaseKeeper(store, Lease.new()).__enter__()


def test_no_worker_write_lands_after_a_take_over_though_the_fence_reads_the_lease_once_a_while(s3_bucket):
    """On object stores a worker's fence reuses a lease read for FENCE_CACHE_S (a GET per unit, not per chunk); a take-over
    waits that long before it returns, so by the time the new run may write, the old run's workers are fenced off."""
    import socket
    import subprocess
    import sys

    from segbatch.owner import Fence

    store = f"{s3_bucket}/s.zarr"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    now = time.time()
    old = Lease("old-run", socket.gethostname(), int(gone.stdout), now, now)  # its driver died a moment ago, on this host
    write_lease(store, old)
    fence = Fence(store, old.run)
    fence.check()  # a worker of the old run, its lease read (and kept) just now
    started = time.monotonic()
    with LeaseKeeper(store, Lease.new()) as keeper:
        assert keeper.previous is not None and keeper.previous.run == old.run
        assert time.monotonic() - started >= lease_module.FENCE_CACHE_S  # the take-over waited out the workers' reads
        with pytest.raises(LeaseLostError, match="now belongs to"):
            fence.check()  # before a chunk: its kept read has expired
        with pytest.raises(LeaseLostError, match="now belongs to"):
            fence.check(fresh=True)  # before a ledger entry: always read afresh


def test_a_fence_reads_an_object_stores_lease_once_per_period_and_afresh_for_ledger_entries(s3_bucket, monkeypatch):
    from segbatch.owner import Fence

    store = f"{s3_bucket}/s.zarr"
    mine = Lease.new()
    write_lease(store, mine)
    reads = []
    real = lease_module.read_lease
    monkeypatch.setattr(lease_module, "read_lease", lambda s: reads.append(s) or real(s))
    fence = Fence(store, mine.run)
    for _ in range(10):
        fence.check()  # ten chunks
    assert len(reads) == 1
    fence.check(fresh=True)  # the unit's ledger entry
    assert len(reads) == 2
