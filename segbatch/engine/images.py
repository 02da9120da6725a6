"""Image folders as a source: the sorted listing as a padded image stack, units of consecutive images.

Image i of the sorted listing is row i of every array, its pixels at
[i, :height_i, :width_i]; the rest of the row stays fill (255, NaN) and, as
zarr stores no chunk it was never given, costs no disk. A chunk holds part of
one image only, so a unit (a run of whole images) owns its chunks and one
writer per chunk holds. Images differ in size, so each goes to the model on
its own (a batch of one).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segbatch import location
from segbatch.engine.job import RunConfig
from segbatch.engine.outcome import RunSummary, finished_or_fail, mark_complete
from segbatch.engine.outputs import output_names
from segbatch.engine.pipeline import require_readable
from segbatch.engine.source import UNITS_PER_ACTOR, FinalisedAtEnd, Item, UnitReport, Write
from segbatch.engine.step import ModelStep
from segbatch.errors import DataError, InputError
from segbatch.owner import Owner
from segbatch.sources.images import ImageFolderPlan, probe_folder, read_image, to_unit_float
from segbatch.store import StoreLayout, store_attrs

if TYPE_CHECKING:
    from zarr import Group

MAX_UNIT_IMAGES = 16
MAX_CHUNK_SIDE = 1024  # a large image spans several chunks, all of them its own


@dataclass(frozen=True)
class ImageUnit:
    """Images [start, stop) of the listing (store rows [start, stop))."""

    id: int
    start: int
    stop: int


def unit_images_for(images: int, actors: int) -> int:
    """Images per unit: at least UNITS_PER_ACTOR units per actor (so none idles at the end), at most MAX_UNIT_IMAGES."""
    return max(1, min(MAX_UNIT_IMAGES, images // (UNITS_PER_ACTOR * max(1, actors))))


def plan_image_units(images: int, unit_images: int) -> list[ImageUnit]:
    """Cut images [0, images) into consecutive runs of `unit_images`."""
    return [ImageUnit(i, s, min(s + unit_images, images)) for i, s in enumerate(range(0, images, unit_images))]


def fits_model(bands: int, in_channels: int) -> bool:
    """Whether an image with `bands` bands can go to the model: the same count, or grey for an RGB model (repeated)."""
    return bands == in_channels or (bands == 1 and in_channels == 3)


def model_input(image: np.ndarray, in_channels: int, path: Path) -> np.ndarray:
    """(H, W, C) image -> (in_channels, H, W) float32 in [0, 1], as `segbatch train` scales it; grey repeated for an RGB model."""
    bands = image.shape[2]
    if not fits_model(bands, in_channels):
        raise DataError(f"{path}: {bands} bands but the model takes {in_channels}")
    x = to_unit_float(image)
    return np.repeat(x, in_channels, axis=0) if bands != in_channels else x


@dataclass(frozen=True)
class ImageJob:
    """The worker half: everything an actor needs about the folder besides the unit (sent once to each)."""

    store: str
    root: str  # the folder; paths are relative to it
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]  # (height, width, bands) per image, from the headers
    in_channels: int

    def check_node(self) -> None:
        require_readable(self.root)

    def read(self, unit: ImageUnit, report: UnitReport) -> Generator[Item, None, None]:
        """Each image alone (images differ in size); one that cannot be used is recorded and keeps its fill values."""
        for i in range(unit.start, unit.stop):
            path = Path(self.root) / self.paths[i]
            try:
                x = model_input(read_image(path), self.in_channels, path)
                h, w = x.shape[1:]
                if (h, w) != self.shapes[i][:2]:
                    raise DataError(f"{path}: decodes to {w}x{h} but its header says {self.shapes[i][1]}x{self.shapes[i][0]}")
            except DataError as exc:
                report.unreadable.append({"image": i, "path": self.paths[i], "error": str(exc).removeprefix(f"{path}: ")})
                continue
            yield Item(i, x)

    def to_model(self, x: Any) -> Any:
        return x

    def from_model(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return outputs  # already the store's arrays in its dtypes

    def placer(self, unit: ImageUnit, num_classes: int) -> ImagePlacer:
        return ImagePlacer()

    def unit_stats(self, unit: ImageUnit, report: UnitReport) -> dict[str, Any]:
        return {"unit": unit.id, "images": [unit.start, unit.stop], "unreadable": report.unreadable}


class ImagePlacer:
    """An image's outputs to its own rows and columns, written as soon as they come (its chunks are its own)."""

    def put(self, items: Sequence[Item], outputs: Mapping[str, np.ndarray]) -> list[Write]:
        (item,) = items
        h, w = outputs["labels"].shape[1:3]
        return [Write((slice(item.index, item.index + 1), slice(0, h), slice(0, w)), outputs)]

    def close(self) -> list[Write]:
        return []


class ImageSource(FinalisedAtEnd):
    """The driver half: list the folder (headers only), lay out the padded stack, cut the units, finalise."""

    kind = "images"
    noun = "image"

    def __init__(self, cfg: RunConfig, ckpt: Any) -> None:
        if location.is_url(cfg.input):
            raise InputError(f"{cfg.input}: an image folder must be a path every node sees (a shared file system), not a URL")
        self.cfg, self.ckpt = cfg, ckpt
        self.plan: ImageFolderPlan = probe_folder(Path(cfg.input))
        in_channels = ckpt.spec.in_channels
        if not any(fits_model(b, in_channels) for _, _, b in self.plan.shapes):
            found = ", ".join(str(b) for b in sorted({b for _, _, b in self.plan.shapes}))
            raise InputError(f"the model takes {in_channels} input bands; the images in {cfg.input} have {found}")
        self.outputs = output_names(cfg)
        self.max_units = self.plan.images

    def fingerprint(self) -> dict[str, Any]:
        return {
            "source": {"images": self.plan.images, "listing_sha256": self.plan.listing_sha256},
            "resize": list(self.cfg.resize) if self.cfg.resize else None,
            "outputs": list(self.outputs),
        }

    def new_store(self, actors: int) -> tuple[StoreLayout, dict[str, Any]]:
        plan = self.plan
        unit_images = unit_images_for(plan.images, actors)
        n, h, w = plan.images, plan.max_height, plan.max_width
        layout = StoreLayout(
            dims=("image", "y", "x"),
            shape=(n, h, w),
            chunks=(1, min(h, MAX_CHUNK_SIDE), min(w, MAX_CHUNK_SIDE)),
            num_classes=self.ckpt.spec.num_classes,
            units=len(plan_image_units(n, unit_images)),
            outputs=self.outputs,
            float_dtype=self.cfg.float_dtype,
            coords={
                "path": (("image",), np.asarray(plan.paths, dtype=str), {"long_name": "image file, relative to the source folder"}),
                "height": (("image",), np.asarray([s[0] for s in plan.shapes], np.int32), {"long_name": "image height (rows [0, height) hold it)"}),
                "width": (("image",), np.asarray([s[1] for s in plan.shapes], np.int32), {"long_name": "image width (columns [0, width) hold it)"}),
            },
        )
        source = {"path": plan.root, "kind": "images", "images": n, "max_height": h, "max_width": w}
        planned = [{"kind": "unreadable", "path": path, "image": None, "error": error} for path, error in plan.unreadable]
        return layout, {
            "source": source,
            "resize": list(self.cfg.resize) if self.cfg.resize else None,
            "unit_images": unit_images,
            "problems": planned,
        }

    def units(self, attrs: Mapping[str, Any]) -> list[ImageUnit]:
        return plan_image_units(self.plan.images, int(attrs["unit_images"]))

    @staticmethod
    def job_options(cfg: RunConfig) -> dict[str, Any]:
        """What every image folder of a job would share in its fingerprint."""
        return {"resize": list(cfg.resize) if cfg.resize else None, "outputs": list(cfg.extra_outputs)}

    def step(self, checkpoint: str) -> ModelStep:
        """Each image alone (images differ in size)."""
        model_outputs = tuple(name for name in self.outputs if name != "labels")
        return ModelStep.of(self.cfg, checkpoint, model_outputs, self.cfg.float_dtype, 1, self.cfg.resize)

    def job(self, store: str) -> ImageJob:
        return ImageJob(
            store=store,
            root=self.plan.root,
            paths=self.plan.paths,
            shapes=self.plan.shapes,
            in_channels=self.ckpt.spec.in_channels,
        )

    def size(self, unit: ImageUnit) -> int:
        return unit.stop - unit.start

    def describe(self, unit: ImageUnit) -> str:
        return f"unit {unit.id} (images {unit.start}:{unit.stop}, {self.plan.paths[unit.start]} ...)"

    def finish(self, root: Group, units: Sequence[ImageUnit], ran: Sequence[ImageUnit], summary: RunSummary, owner: Owner) -> None:
        """From the ledger (every unit, this run's and earlier ones') and the plan's problems: the final attributes."""
        ledger = finished_or_fail(root, [u.id for u in units])
        attrs = store_attrs(root)
        planned = [p for p in attrs.get("problems", []) if p.get("image") is None]
        found = [
            {"kind": "unreadable", "path": e["path"], "image": e["image"], "error": e["error"]} for _, s in sorted(ledger.items()) for e in s["unreadable"]
        ]
        problems = sorted(planned + found, key=lambda p: p["path"])
        summary.items -= sum(len(ledger[u.id]["unreadable"]) for u in ran)
        mark_complete(root, problems, summary, {"images": attrs["source"]["images"] - len(found), "unreadable": len(problems)}, ledger)
