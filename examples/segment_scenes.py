"""Segment freshly generated street scenes with Bayesian SegNet and see where it is unsure.

    python examples/segment_scenes.py --out demo-out [--count 4] [--samples 8] [--model CKPT]

For each scene (drawn from seeds the demo model never trained on) it runs
`segbatch.mc.mc_predict`, writes a panel PNG (input | truth | prediction |
uncertainty) and prints the mIoU and how much more uncertain the model is on
the pixels it gets wrong than on those it gets right: the point of Bayesian
SegNet, measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segbatch.atomic import atomic_path
from segbatch.colour import colourise, heatmap
from segbatch.demo.model import DEMO_NOTICE, demo_checkpoint_path
from segbatch.demo.scenes import render_image
from segbatch.mc import mc_predict
from segbatch.model import load_checkpoint
from segbatch.train import confusion_matrix, mean_iou

HELD_OUT_SEEDS = 1_000_000  # the demo model trained on dataset seed 0: scenes (0, k)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--size", default="360x480")
    ap.add_argument("--model", type=Path, help="checkpoint (default: the built-in demo model)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    if args.model is None:
        print(DEMO_NOTICE, file=sys.stderr)
    ckpt = load_checkpoint(args.model or demo_checkpoint_path())
    args.out.mkdir(parents=True, exist_ok=True)
    confusion = np.zeros((ckpt.spec.num_classes,) * 2, dtype=np.int64)
    right_unc, wrong_unc = [], []
    for k in range(args.count):
        image, truth = render_image(HELD_OUT_SEEDS + k, h, w)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        out = mc_predict(ckpt.model, x, samples=args.samples, seed=k)
        labels = out["labels"][0].numpy()
        unc = out["uncertainty"][0].numpy()
        confusion += confusion_matrix(labels, truth, ckpt.spec.num_classes, 255)
        wrong = labels != truth
        right_unc.append(unc[~wrong])
        wrong_unc.append(unc[wrong])
        vmax = float(np.quantile(unc, 0.99))
        panel = np.concatenate([image, colourise(truth, ckpt.spec.palette), colourise(labels, ckpt.spec.palette), heatmap(unc, vmax)], axis=1)
        with atomic_path(args.out / f"scene{k:02d}.png") as tmp:
            Image.fromarray(panel).save(tmp)
        print(f"scene {k}: pixel accuracy {1 - wrong.mean():.3f}, mean uncertainty {unc.mean():.4f}", file=sys.stderr)
    right, wrong = np.concatenate(right_unc), np.concatenate(wrong_unc)
    print(f"mIoU {mean_iou(confusion):.3f} over {args.count} scenes ({args.samples} MC samples)")
    print(f"mean uncertainty on right pixels {right.mean():.4f}, on wrong pixels {wrong.mean() if wrong.size else float('nan'):.4f}")
    print(f"panels (input | truth | prediction | uncertainty) in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
