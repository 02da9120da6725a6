"""Codecs and digests for the store's arrays, chosen on speed and size together: real model outputs, one core.

    python -m benchmarks.codecs STORE [STORE ...] [--chunks 4]

Reads the first --chunks chunks of every output array of each STORE (make
them with real runs, e.g. `segbatch run --input street.mp4 --out street.zarr
--outputs probs` on the demo video at 360x480 and on a real clip: the stand-in
of `benchmarks.pipeline` writes outputs far more regular than a network's).
Per array, each candidate codec encodes and decodes every chunk (checked
lossless) on this thread, Blosc with its own threads off, as the writer thread
runs them. Printed per candidate: encode and decode MB/s of raw bytes, and the
store's bytes relative to today's codec (Zstd level 0, Zarr's default). Then the
digests: BLAKE2b-128 and BLAKE3-128 (what stores recorded before) and xxh3-128 (today) in MB/s.

The candidates' encoders are numcodecs' (the same C libraries Zarr's v3 codecs
call); the last table writes the same chunks through Zarr with each array's
choice, which is what a worker pays.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS = ("labels", "entropy", "confidence", "uncertainty", "mutual_information", "probs")
REPEAT = 3  # best of, per chunk


def candidates() -> dict[str, Any]:
    from numcodecs import LZ4, Blosc, Zstd

    Blosc.use_threads = False  # the writer thread encodes one chunk at a time on one core
    return {
        "zstd-0 (today)": Zstd(level=0),
        "zstd-1": Zstd(level=1),
        "lz4": LZ4(),
        "blosc lz4 shuffle": Blosc("lz4", 5, Blosc.SHUFFLE),
        "blosc lz4 bitshuffle": Blosc("lz4", 5, Blosc.BITSHUFFLE),
        "blosc zstd-1 shuffle": Blosc("zstd", 1, Blosc.SHUFFLE),
        "blosc zstd-1 bitshuffle": Blosc("zstd", 1, Blosc.BITSHUFFLE),
        "blosc zstd-3 bitshuffle": Blosc("zstd", 3, Blosc.BITSHUFFLE),
    }


def best(fn: Callable[[], Any]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(REPEAT):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def chunks_of(store: str, count: int) -> dict[str, list[np.ndarray]]:
    import zarr

    root = zarr.open_group(store, mode="r")
    out = {}
    for name in ARRAYS:
        if name in root:
            arr = root[name]
            step = arr.chunks[0]
            out[name] = [np.ascontiguousarray(arr[i : i + step]) for i in range(0, min(arr.shape[0], count * step), step)]
    return out


def codec_table(chunks: dict[str, list[np.ndarray]]) -> None:
    from numcodecs import Blosc

    print(f"  {'array':<12} {'codec':<26} {'encode MB/s':>11} {'decode MB/s':>11} {'size vs today':>13}")
    for name, blocks in chunks.items():
        raw = sum(b.nbytes for b in blocks)
        sizes: dict[str, int] = {}
        for label, codec in candidates().items():
            if isinstance(codec, Blosc) and blocks[0].itemsize == 1 and "bitshuffle" not in label and "shuffle" in label:
                continue  # byte shuffle of one-byte items is no shuffle
            enc = dec = 0.0
            size = 0
            for b in blocks:
                t, encoded = best(lambda b=b, codec=codec: codec.encode(b))  # type: ignore[misc]
                enc += t
                size += len(encoded)
                t, decoded = best(lambda e=encoded, codec=codec: codec.decode(e))  # type: ignore[misc]
                dec += t
                assert np.frombuffer(decoded, b.dtype).tobytes() == b.tobytes(), (label, name)
            sizes[label] = size
            ratio = size / sizes["zstd-0 (today)"]
            print(f"  {name:<12} {label:<26} {raw / enc / 1e6:>11.0f} {raw / dec / 1e6:>11.0f} {ratio:>12.2f}x   ({raw / size:.1f}:1)")


def digest_table(chunks: dict[str, list[np.ndarray]]) -> None:
    import blake3
    import xxhash

    blocks = [b for bs in chunks.values() for b in bs]
    raw = sum(b.nbytes for b in blocks)
    for label, fn in (
        ("blake2b-128", lambda b: hashlib.blake2b(b.data, digest_size=16).hexdigest()),
        ("blake3-128", lambda b: blake3.blake3(b.reshape(-1).view(np.uint8)).hexdigest(length=16)),
        ("xxh3-128 (today)", lambda b: xxhash.xxh3_128_hexdigest(b.reshape(-1).view(np.uint8))),
    ):
        total = sum(best(lambda b=b, fn=fn: fn(b))[0] for b in blocks)  # type: ignore[misc]
        print(f"  {label:<22} {raw / total / 1e6:>7.0f} MB/s")


def zarr_writes(chunks: dict[str, list[np.ndarray]]) -> None:
    """What a worker pays per frame through Zarr (`write_region`: digests included): Zstd for every array, then `array_codecs`.

    Each chunk is written REPEAT + 1 times to chunks of its own; the first round warms up and is not timed.
    """
    import zarr

    from segbatch.store import OpenArrays, array_codecs, write_region

    step = chunks["labels"][0].shape[0]
    n = len(chunks["labels"])
    today = {"compressors": zarr.codecs.ZstdCodec(level=0)}
    for label, chooser in (("zstd-0 for every array (before)", lambda dtype: today), ("array_codecs (now)", array_codecs)):
        with tempfile.TemporaryDirectory() as tmp:
            root = zarr.open_group(tmp, mode="w")
            for name, blocks in chunks.items():
                b0 = blocks[0]
                fill = 255 if b0.dtype == np.uint8 else np.nan
                root.create_array(name, shape=((REPEAT + 1) * n * step, *b0.shape[1:]), chunks=b0.shape, dtype=b0.dtype, fill_value=fill, **chooser(b0.dtype))
            arrays = OpenArrays(zarr.open_group(tmp, mode="r+"))
            total = 0.0
            for r in range(REPEAT + 1):
                t = time.perf_counter()
                for i in range(n):
                    at = (r * n + i) * step
                    write_region(arrays, (slice(at, at + step),), {name: blocks[i] for name, blocks in chunks.items()})
                total += (time.perf_counter() - t) if r else 0.0
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file() and "c" in p.relative_to(tmp).parts)
        frames = n * step
        print(f"  {label:<34} {total / (REPEAT * frames) * 1e3:6.2f} ms per frame, {size / ((REPEAT + 1) * frames) / 1e3:7.1f} kB per frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per array read from each store")
    args = parser.parse_args()
    for store in args.stores:
        chunks = chunks_of(store, args.chunks)
        shape = chunks["labels"][0].shape
        print(f"{store}: {sum(len(b) for b in chunks['labels'])} frames of {shape[1]}x{shape[2]}, chunks of {shape[0]}")
        codec_table(chunks)
        digest_table(chunks)
        zarr_writes(chunks)


if __name__ == "__main__":
    main()
