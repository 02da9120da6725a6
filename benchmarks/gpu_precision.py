"""Frames/s of SegNet with MC dropout in each precision, and the fraction of the device's peak that is.

    python -m benchmarks.gpu_precision [--device cuda] [--size 360x480] [--samples 8] [--batch 4] [--peak-tflops 989]

Measures `mc_predict` (the shared prefix on, as the workers run it) on a
full-width SegNet (11 classes) with channels-last weights and inputs on CUDA,
for fp32, fp16 and bf16 (autocast). FLOPs per frame are counted with
torch.utils.flop_counter on one pass of the prefix plus `samples` passes of the
rest; "of peak" divides the achieved FLOP/s by --peak-tflops (default: H100 SXM
dense bf16/fp16 tensor-core peak, 989 TFLOP/s; its fp32 non-tensor peak is 67).
A first line times the dropout masks of one frame on the device (all layers,
`samples` rows) and checks they equal the CPU's bit for bit.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segbatch.mc import mc_predict
from segbatch.model import build_model
from segbatch.model.segnet import dropout_keys, dropout_layers, keep_mask


def flops_per_frame(model: torch.nn.Module, x: torch.Tensor, samples: int) -> float:
    with FlopCounterMode(display=False) as counter:
        mc_predict(model, x[:1], samples=samples, seed=0)
    return float(counter.get_total_flops())


def check_masks(model: torch.nn.Module, x: torch.Tensor, samples: int, repeats: int) -> str:
    """Time one frame's masks on x's device and compare them with the CPU's, bit for bit."""
    drops = dropout_layers(model)
    shapes: list[tuple[int, ...]] = []
    hooks = [d.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:]))) for d in drops]
    mc_predict(model, x[:1], samples=1, seed=0)
    for h in hooks:
        h.remove()
    keys = torch.from_numpy(dropout_keys([0], range(samples), len(drops)).view("int64")).reshape(len(drops), samples)
    on_device = keys.to(x.device)
    same = all(torch.equal(keep_mask(on_device[i], shape, d.p).cpu(), keep_mask(keys[i], shape, d.p)) for i, (d, shape) in enumerate(zip(drops, shapes)))

    def masks() -> None:
        for i, (d, shape) in enumerate(zip(drops, shapes)):
            keep_mask(on_device[i], shape, d.p)
        if x.is_cuda:
            torch.cuda.synchronize()

    masks()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        masks()
        best = min(best, time.perf_counter() - start)
    elements = samples * sum(int(torch.tensor(s).prod()) for s in shapes)
    return f"masks: {elements / 1e6:.1f} M elements per frame, {best * 1e3:.2f} ms per frame on {x.device.type}; equal to the CPU's bit for bit: {same}"


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
    print("  " + check_masks(model, x, args.samples, args.repeats))
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
