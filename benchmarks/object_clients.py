"""s3fs (fsspec) against obstore on the same S3-protocol server: conditional puts (the lease), chunk writes, small reads (the ledger).

    python -m benchmarks.object_clients [--chunks 64] [--size 360x480] [--entries 2000] [--rounds 200]

Both clients talk to moto's S3 server in a process of its own on loopback
(tests/helpers/s3.py), through what segbatch would use of each:

lease: a create-if-absent put (If-None-Match: *), then --rounds
replace-if-unchanged puts (If-Match: the ETag the last put returned), then
one put with a stale ETag, which must be refused (412), ms per put. s3fs
through botocore's put_object (segbatch.lease today); obstore through
obstore.put(mode=...).

chunks: a Zarr array of --chunks float16 chunks of --size (zstd, as a
store's uncertainty), written whole through zarr.storage.FsspecStore or
zarr.storage.ObjectStore: MB/s of compressed bytes.

ledger: --entries one-entry chunks of a string array (a ledger), read whole
through each Zarr store (Zarr reads chunks concurrently): seconds.

Loopback costs ~1 ms a request where a region's S3 costs 10-50 ms: the
ratios carry over better than the seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def fsspec_store(endpoint: str, bucket: str, prefix: str) -> Any:
    import zarr.storage

    return zarr.storage.FsspecStore.from_url(f"s3://{bucket}/{prefix}", storage_options={"endpoint_url": endpoint})


def obstore_store(endpoint: str, bucket: str, prefix: str) -> Any:
    import zarr.storage
    from obstore.store import S3Store

    raw = S3Store(bucket, prefix=prefix, endpoint=endpoint, virtual_hosted_style_request=False, client_options={"allow_http": True})
    return zarr.storage.ObjectStore(raw)


def lease_s3fs(endpoint: str, bucket: str, rounds: int) -> tuple[float, bool]:
    """ms per conditional put through s3fs/botocore, and whether a stale ETag was refused."""
    import s3fs
    from botocore.exceptions import ClientError

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    key = "lease-s3fs/zarr.json"
    started = time.perf_counter()
    etag = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")["ETag"]
    first = etag
    for i in range(rounds):
        etag = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=json.dumps({"i": i}).encode(), IfMatch=etag)["ETag"]
    per_put = (time.perf_counter() - started) / (rounds + 1) * 1e3
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"{}", IfMatch=first)
        refused = False
    except OSError as exc:  # s3fs raises botocore's error as an OSError, the S3 error code in its cause
        cause = exc.__cause__
        refused = isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "PreconditionFailed"
    return per_put, refused


def lease_obstore(endpoint: str, bucket: str, rounds: int) -> tuple[float, bool]:
    """ms per conditional put through obstore, and whether a stale ETag was refused."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=endpoint, virtual_hosted_style_request=False, client_options={"allow_http": True})
    key = "lease-obstore/zarr.json"
    started = time.perf_counter()
    etag = obstore.put(store, key, b"{}", mode="create")["e_tag"]
    first = etag
    for i in range(rounds):
        etag = obstore.put(store, key, json.dumps({"i": i}).encode(), mode={"e_tag": etag})["e_tag"]
    per_put = (time.perf_counter() - started) / (rounds + 1) * 1e3
    try:
        obstore.put(store, key, b"{}", mode={"e_tag": first})
        refused = False
    except Exception as exc:  # obstore's PreconditionError
        refused = "precondition" in type(exc).__name__.lower() or "412" in str(exc)
    return per_put, refused


def chunk_writes(store: Any, chunks: int, height: int, width: int) -> float:
    """MB/s of compressed chunk bytes written through Zarr to `store`."""
    import zarr
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(store, mode="w")
    arr = root.create_array("uncertainty", shape=(chunks, height, width), chunks=(1, height, width), dtype="float16", compressors=ZstdCodec(level=3))
    rng = np.random.default_rng(0)
    data = (rng.random((chunks, height, width)) ** 4).astype(np.float16)  # mostly small values, as an uncertainty map
    started = time.perf_counter()
    for i in range(chunks):  # one chunk per call, as a worker writes a unit's frames
        arr[i] = data[i]
    seconds = time.perf_counter() - started
    stored = arr.nbytes_stored()
    return stored / 1e6 / seconds


def ledger_read(store: Any, entries: int) -> tuple[float, float]:
    """Seconds to write `entries` one-entry chunks of a string array (16 at once), and to read the array whole."""
    import zarr

    root = zarr.open_group(store, mode="w")
    arr = root.create_array("ledger", shape=(entries,), chunks=(1,), dtype=str)
    started = time.perf_counter()
    block = 256
    for start in range(0, entries, block):  # Zarr writes a block's chunks concurrently
        stop = min(entries, start + block)
        arr[start:stop] = np.array([json.dumps({"unit": u, "run": "bench", "stages": {"write": 0.1}}) for u in range(start, stop)], dtype=object)
    written = time.perf_counter() - started
    started = time.perf_counter()
    got = zarr.open_group(store, mode="r")["ledger"][...]
    read = time.perf_counter() - started
    assert len(got) == entries and json.loads(got[-1])["unit"] == entries - 1
    return written, read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--size", default="360x480")
    ap.add_argument("--entries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    import os

    from tests.helpers.s3 import S3Server, environment

    h, w = (int(v) for v in args.size.split("x"))
    server = S3Server()
    server.start()
    try:
        os.environ.update(environment(server.port))
        results: dict[str, dict[str, Any]] = {}
        for name, lease, store in (("s3fs", lease_s3fs, fsspec_store), ("obstore", lease_obstore, obstore_store)):
            bucket = server.bucket().removeprefix("s3://")
            per_put, refused = lease(server.endpoint, bucket, args.rounds)
            mbs = chunk_writes(store(server.endpoint, bucket, "chunks.zarr"), args.chunks, h, w)
            written, read = ledger_read(store(server.endpoint, bucket, "ledger.zarr"), args.entries)
            results[name] = {"put_ms": per_put, "stale_refused": refused, "chunk_MBps": mbs, "ledger_write_s": written, "ledger_read_s": read}
            print(
                f"{name:<8} conditional put {per_put:6.2f} ms (stale ETag refused: {refused}); "
                f"chunks {mbs:6.1f} MB/s ({args.chunks} x {args.size} float16, zstd); "
                f"ledger of {args.entries}: written {written:5.2f} s, read whole {read:5.2f} s"
            )
        print(json.dumps(results))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
