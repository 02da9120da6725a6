"""Frames/s of SegNet with MC dropout in each precision, and the fraction of the device's peak that is.

    python benchmarks/gpu_precision.py [--device cuda] [--size 360x480] [--samples 8] [--batch 4] [--peak-tflops 989]

Measures `mc_predict` (the shared prefix on, as the workers run it) on a
full-width SegNet (11 classes) with channels-last weights and inputs on CUDA,
for fp32, fp16 and bf16 (autocast). FLOPs per frame are counted with
torch.utils.flop_counter on one pass of the prefix plus `samples` passes of the
rest; "of peak" divides the achieved FLOP/s by --peak-tflops (default: H100 SXM
dense bf16/fp16 tensor-core peak, 989 TFLOP/s; its fp32 non-tensor peak is 67).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segbatch.mc import mc_predict
from segbatch.model import build_model


def flops_per_frame(model: torch.nn.Module, x: torch.Tensor, samples: int) -> float:
    with FlopCounterMode(display=False) as counter:
        mc_predict(model, x[:1], samples=samples, seed=0)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    model = build_model("segnet", 11).to(device).eval()
    x = torch.rand(args.batch, 3, h, w, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    flops = flops_per_frame(model, x, args.samples)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: SegNet {h}x{w}, {args.samples} samples, batch {args.batch}; {flops / 1e9:.1f} GFLOP per frame")
    for precision in ("fp32", "fp16", "bf16"):
        mc_predict(model, x, samples=args.samples, seed=list(range(args.batch)), precision=precision)  # warm-up (cuDNN autotune)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            mc_predict(model, x, samples=args.samples, seed=list(range(args.batch)), precision=precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        fps = args.batch / best
        print(f"  {precision}: {fps:7.2f} frames/s, {fps * flops / 1e12:7.2f} TFLOP/s = {fps * flops / 1e12 / args.peak_tflops:6.1%} of {args.peak_tflops:g}")


if __name__ == "__main__":
    main()
