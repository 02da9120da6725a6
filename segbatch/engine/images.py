"""Image folders: plan the listing, create a padded image-stack store, segment runs of images on actors, finalise.

Same engine, ledger and resume as video. Image i of the sorted listing is
row i of every array, its pixels at [i, :height_i, :width_i]; the rest of the
row stays fill (255, NaN) and, as zarr stores no chunk it was never given,
costs no disk. A chunk holds part of one image only, so a unit (a run of
whole images) owns its chunks and one writer per chunk holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import location
from segbatch.engine.driver import (
    UNITS_PER_ACTOR,
    RunSummary,
    check_target,
    model_attrs,
    output_names,
    pool_size,
    ray_session,
    replace_store,
    resolve_model,
    run_units,
)
from segbatch.engine.job import RunConfig, config_digest, software_versions
from segbatch.engine.worker import ModelWorker, predict_outputs, require_readable
from segbatch.errors import DataError, InputError, RunError
from segbatch.lease import Lease, LeaseKeeper
from segbatch.mc import derive_seed
from segbatch.sources.images import ImageFolderPlan, probe_folder, read_image, to_unit_float
from segbatch.store import (
    StoreLayout,
    base_attrs,
    create_store,
    finished_units,
    reopen_for_resume,
    store_attrs,
    update_attrs,
)

MAX_UNIT_IMAGES = 16
MAX_CHUNK_SIDE = 1024  # a large image spans several chunks, all of them its own


@dataclass(frozen=True)
class ImageUnit:
    """Images [start, stop) of the listing (store rows [start, stop))."""

    id: int
    start: int
    stop: int


@dataclass(frozen=True)
class ImageJob:
    """Everything an image worker needs besides the unit: sent once to each actor."""

    store: str
    checkpoint: str
    root: str  # the folder; paths are relative to it
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]  # (height, width, bands) per image, from the headers
    samples: int
    seed: int
    resize: tuple[int, int] | None
    outputs: tuple[str, ...]
    float_dtype: str
    threads: int
    precision: str = "fp32"
    run: str = ""  # the run that owns the store (its lease): every write is fenced by it


def unit_images_for(images: int, actors: int) -> int:
    """Images per unit: at least UNITS_PER_ACTOR units per actor (so none idles at the end), at most MAX_UNIT_IMAGES."""
    return max(1, min(MAX_UNIT_IMAGES, images // (UNITS_PER_ACTOR * max(1, actors))))


def plan_image_units(images: int, unit_images: int) -> list[ImageUnit]:
    """Cut images [0, images) into consecutive runs of `unit_images`."""
    return [ImageUnit(i, s, min(s + unit_images, images)) for i, s in enumerate(range(0, images, unit_images))]


def fits_model(bands: int, in_channels: int) -> bool:
    """Whether an image with `bands` bands can go to the model: the same count, or grey for an RGB model (repeated)."""
    return bands == in_channels or (bands == 1 and in_channels == 3)


def image_fingerprint(plan: ImageFolderPlan, job: ImageJob, model_sha256: str) -> dict[str, Any]:
    """The settings that decide the output's bits; --resume requires them unchanged."""
    return {
        "source": {"images": plan.images, "listing_sha256": plan.listing_sha256},
        "model_sha256": model_sha256,
        "samples": job.samples,
        "seed": job.seed,
        "resize": list(job.resize) if job.resize else None,
        "outputs": list(job.outputs),
        "float_dtype": job.float_dtype,
        "precision": job.precision,
        "software": software_versions(),
    }


class ImageWorker(ModelWorker):
    """Segments units of an image folder job; one per Ray actor, model loaded once."""

    def __init__(self, job: ImageJob) -> None:
        super().__init__(job.checkpoint, job.store, job.threads, job.run)
        self.job = job
        require_readable(job.root)

    def process(self, unit: ImageUnit) -> dict[str, Any]:
        """Segment images [unit.start, unit.stop), each written as soon as done, then the unit's ledger entry.

        An image that cannot be used (fails to decode, wrong band count) is
        recorded and keeps its fill values; the others still run.
        """
        started = time.perf_counter()
        self.digests = {}
        unreadable = []
        for i in range(unit.start, unit.stop):
            try:
                self._segment(i)
            except DataError as exc:
                path = Path(self.job.root) / self.job.paths[i]
                unreadable.append({"image": i, "path": self.job.paths[i], "error": str(exc).removeprefix(f"{path}: ")})
        stats = {"unit": unit.id, "images": [unit.start, unit.stop], "unreadable": unreadable, "seconds": round(time.perf_counter() - started, 3)}
        self.record(unit.id, stats)
        return stats

    def _segment(self, i: int) -> None:
        job = self.job
        path = Path(job.root) / job.paths[i]
        x = model_input(read_image(path), self.model.in_channels, path)
        h, w = x.shape[1:]
        if (h, w) != job.shapes[i][:2]:
            raise DataError(f"{path}: decodes to {w}x{h} but its header says {job.shapes[i][1]}x{job.shapes[i][0]}")
        seeds = [derive_seed(job.seed, i)]
        out = predict_outputs(self.model, self.to_device(x[None]), seeds, job.samples, job.resize, job.outputs, job.float_dtype, job.precision)
        self.write([slice(i, i + 1), slice(0, h), slice(0, w)], out)


def model_input(image: np.ndarray, in_channels: int, path: Path) -> np.ndarray:
    """(H, W, C) image -> (in_channels, H, W) float32 in [0, 1], as `segbatch train` scales it; grey repeated for an RGB model."""
    bands = image.shape[2]
    if not fits_model(bands, in_channels):
        raise DataError(f"{path}: {bands} bands but the model takes {in_channels}")
    x = to_unit_float(image)
    return np.repeat(x, in_channels, axis=0) if bands != in_channels else x


def run_images(cfg: RunConfig) -> RunSummary:
    """Segment every image under a folder into one Zarr store (a padded image stack): plan, store, actors, finalise."""
    from segbatch.model.checkpoint import load_checkpoint

    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if cfg.frames or cfg.bands or cfg.keep_tiles:
        raise InputError("--frames, --bands and --keep-tiles are not for image folders")
    if location.is_url(cfg.input):
        raise InputError(f"{cfg.input}: an image folder must be a path every node sees (a shared file system), not a URL")
    lease = Lease.new()
    ckpt = load_checkpoint(resolve_model(cfg.model, cfg.quiet))
    plan = probe_folder(Path(cfg.input))  # not a URL (refused above): a local path
    in_channels = ckpt.spec.in_channels
    if not any(fits_model(b, in_channels) for _, _, b in plan.shapes):
        found = ", ".join(str(b) for b in sorted({b for _, _, b in plan.shapes}))
        raise InputError(f"the model takes {in_channels} input bands; the images in {cfg.input} have {found}")
    job = ImageJob(
        store=location.absolute(cfg.out),
        checkpoint=location.absolute(ckpt.path),
        root=plan.root,
        paths=plan.paths,
        shapes=plan.shapes,
        samples=cfg.samples,
        seed=cfg.seed,
        resize=cfg.resize,
        outputs=output_names(cfg),
        float_dtype=cfg.float_dtype,
        threads=max(1, int(cfg.cpus_per_actor)),
        precision=cfg.precision,
        run=lease.run,
    )
    config = image_fingerprint(plan, job, ckpt.sha256)
    check_target(cfg, lease, ckpt.path)
    with LeaseKeeper(cfg.out, lease) as keeper, ray_session(cfg.address):
        n_actors, gpus = pool_size(cfg, plan.images)  # refuses an impossible pool before a store exists
        root, units, done = _prepare_image_store(cfg, job, plan, ckpt, config, n_actors, keeper)
        return run_units(
            cfg,
            ImageWorker,
            job,
            root,
            [u for u in units if u.id not in done],
            len(units),
            (n_actors, gpus),
            keeper,
            size=lambda u: u.stop - u.start,
            describe=lambda u: f"unit {u.id} (images {u.start}:{u.stop}, {plan.paths[u.start]} ...)",
            noun="image",
            finish=lambda summary, pending: _finalise(root, units, {u.id for u in pending}, summary),
        )


def _prepare_image_store(
    cfg: RunConfig, job: ImageJob, plan: ImageFolderPlan, ckpt: Any, config: dict[str, Any], actors: int, keeper: LeaseKeeper
) -> tuple[Any, list[ImageUnit], dict[int, Any]]:
    """Create the store (driver-only metadata, unreadable headers already listed as problems) and its units, or reopen both for --resume."""
    if location.exists(cfg.out) and cfg.resume:
        root, attrs = reopen_for_resume(cfg.out, config, keeper.lease.run)
        return root, plan_image_units(plan.images, int(attrs["unit_images"])), finished_units(root)
    created: tuple[Any, list[ImageUnit], dict[int, Any]] = replace_store(
        cfg, keeper, lambda: _new_image_store(cfg, job, plan, ckpt, config, actors, keeper.lease)
    )
    return created


def _new_image_store(
    cfg: RunConfig, job: ImageJob, plan: ImageFolderPlan, ckpt: Any, config: dict[str, Any], actors: int, lease: Lease
) -> tuple[Any, list[ImageUnit], dict[int, Any]]:
    unit_images = unit_images_for(plan.images, actors)
    units = plan_image_units(plan.images, unit_images)
    n, h, w = plan.images, plan.max_height, plan.max_width
    layout = StoreLayout(
        dims=("image", "y", "x"),
        shape=(n, h, w),
        chunks=(1, min(h, MAX_CHUNK_SIDE), min(w, MAX_CHUNK_SIDE)),
        num_classes=ckpt.spec.num_classes,
        units=len(units),
        outputs=job.outputs,
        float_dtype=job.float_dtype,
        coords={
            "path": (("image",), np.asarray(plan.paths, dtype=str), {"long_name": "image file, relative to the source folder"}),
            "height": (("image",), np.asarray([s[0] for s in plan.shapes], np.int32), {"long_name": "image height (rows [0, height) hold it)"}),
            "width": (("image",), np.asarray([s[1] for s in plan.shapes], np.int32), {"long_name": "image width (columns [0, width) hold it)"}),
        },
    )
    source = {"path": plan.root, "kind": "images", "images": n, "max_height": h, "max_width": w}
    planned = [{"kind": "unreadable", "path": path, "image": None, "error": error} for path, error in plan.unreadable]
    attrs = base_attrs(source, model_attrs(ckpt), cfg.samples, cfg.seed, config, lease.run) | {
        "fingerprint": config_digest(config),
        "resize": list(cfg.resize) if cfg.resize else None,
        "unit_images": unit_images,
        "problems": planned,
    }
    return create_store(cfg.out, layout, attrs, lease), units, {}


def _finalise(root: Any, units: list[ImageUnit], ran: set[int], summary: RunSummary) -> None:
    """Driver: from the ledger (every unit, this run's and earlier ones') and the plan's problems, write the final attributes."""
    ledger = finished_units(root)
    missing = [u.id for u in units if u.id not in ledger]
    if missing:
        update_attrs(root, status="failed", error=f"{len(missing)} units never finished")
        raise RunError(f"{len(missing)} units never finished (first: {missing[0]}); finish with --resume")
    attrs = store_attrs(root)
    planned = [p for p in attrs.get("problems", []) if p.get("image") is None]
    found = [{"kind": "unreadable", "path": e["path"], "image": e["image"], "error": e["error"]} for _, s in sorted(ledger.items()) for e in s["unreadable"]]
    problems = sorted(planned + found, key=lambda p: p["path"])
    summary.problems = problems
    summary.items -= sum(len(ledger[u]["unreadable"]) for u in ran)
    update_attrs(
        root,
        drop=("error",),
        status="complete",
        problems=problems,
        summary={
            "images": attrs["source"]["images"] - len(found),
            "unreadable": len(problems),
            "worker_seconds": round(sum(s.get("seconds", 0.0) for s in ledger.values()), 3),
            "wall_seconds": round(summary.seconds, 3),
            "actors": summary.actors,
            "device": summary.device,
        },
    )
