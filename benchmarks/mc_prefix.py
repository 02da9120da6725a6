"""Samples/s of `mc_predict` with and without the shared deterministic prefix.

Usage: python -m benchmarks.mc_prefix [--device cuda] [--samples 8] [--size 360x480] [--batch 1] [--repeats 3] [--arch segnet]

The prefix (layers before the first dropout) runs once per batch instead of
once per sample; with central dropout that is SegNet's first three encoder
blocks, most of the encoder's work at full resolution. Expected at 8 samples:
>= 1.25x for SegNet, >= 1.15x for SegNet-Basic. Both arms draw the same
counter-based masks on the device.
"""

from __future__ import annotations

import argparse
import time

import torch

from segbatch.mc import mc_predict
from segbatch.model import build_model


def samples_per_second(model, x, samples: int, share_prefix: bool, repeats: int) -> float:
    mc_predict(model, x, samples, seed=0, share_prefix=share_prefix)  # warm-up (allocator, kernels)
    if x.is_cuda:
        torch.cuda.synchronize()
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        mc_predict(model, x, samples, seed=r, share_prefix=share_prefix)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return samples * x.shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--size", default="360x480")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arch", action="append", choices=["segnet", "segnet-basic"], help="default: both")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
        f"{h}x{w}, batch {args.batch}, {args.samples} samples, best of {args.repeats}"
    )
    for arch in args.arch or ["segnet", "segnet-basic"]:
        model = build_model(arch, 11, dropout="central").to(device).eval()
        x = torch.rand(args.batch, 3, h, w, device=device)
        full = samples_per_second(model, x, args.samples, False, args.repeats)
        shared = samples_per_second(model, x, args.samples, True, args.repeats)
        print(f"{arch:<13} full passes {full:8.2f} samples/s   shared prefix {shared:8.2f} samples/s   ratio {shared / full:.2f}x")


if __name__ == "__main__":
    main()
