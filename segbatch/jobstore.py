"""A job over many inputs: one Zarr store, one group per input, the job's own attributes at the root.

Each group (`job.zarr/<name>/`) is laid out exactly as a single-input store
(its arrays, coordinates, attributes and ledger), so `xarray.open_zarr(job,
group=name)` reads what a run of that input alone gives, and every reader
of a store (info, export, verify, audit) works on a group as on a store.
The root holds what belongs to the job: the inputs (name, location, status),
the configuration every group shares, the runs, and the one lease that
fences every write of the job (groups have none of their own).

The root's list of inputs is written by the driver at the job's start and
end; a group's own status is the live one while a run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from segbatch import __version__, kinds, location, schema
from segbatch.errors import InputError, RunError, StoreError
from segbatch.location import Location

JOB_KIND = "job"
INPUT_STATUSES = ("pending", "complete", "failed")
JOB_STATUSES = ("running", "complete", "failed")
READ_THREADS = 16  # groups' attributes read at once (object stores: one request each)


def group_location(store: Location, name: str) -> Location:
    """Where group `name` of a job store lives: a path inside the store's folder, or a key under its URL."""
    if location.is_url(store):
        return f"{str(store).rstrip('/')}/{name}"
    return Path(store) / name


def is_job(root: Any) -> bool:
    """Whether an opened segbatch store is a job over many inputs (its root holds groups, not arrays)."""
    attrs = root.attrs.get("segbatch")
    return isinstance(attrs, dict) and attrs.get("kind") == JOB_KIND


def job_attrs(root: Any) -> dict[str, Any]:
    """The job root's `segbatch` attribute, checked: a tampered one is a one-line StoreError, never a crash later."""
    attrs = root.attrs.get("segbatch")
    problems = []
    if not isinstance(attrs, dict):
        raise StoreError("the job store's 'segbatch' attribute is not a mapping; the store was altered")
    many = [k.name for k in kinds.KINDS.values() if k.many]  # the kinds a job of many inputs takes
    if attrs.get("input_kind") not in many:
        problems.append(f"input_kind {attrs.get('input_kind')!r} is not one of {', '.join(many)}")
    if attrs.get("status") not in JOB_STATUSES:
        problems.append(f"status {attrs.get('status')!r} is not one of {', '.join(JOB_STATUSES)}")
    inputs = attrs.get("inputs")
    if not isinstance(inputs, list) or not all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("path"), str) and i.get("status") in INPUT_STATUSES for i in inputs
    ):
        problems.append("inputs must be a list of {name, path, status}")
    for key, kind in (("model", dict), ("config", dict), ("runs", list)):
        if not isinstance(attrs.get(key), kind):
            problems.append(f"{key} is missing or not a {kind.__name__}")
    problems += [p.lstrip(".") for p in (schema.MODEL(attrs.get("model"), "model"), _JOB_FIGURES(attrs, "")) if p is not None and not problems]
    if problems:
        raise StoreError(f"the job store's attributes are not what segbatch wrote ({'; '.join(problems)}); the store was altered")
    return dict(attrs)


# what `info` reads of a job besides its inputs: the closing figures and the cause of a failure (paths as `.summary.items`)
_JOB_FIGURES = schema.fields(
    {},
    {
        "summary": schema.nullable(
            schema.fields(
                {},
                {
                    "items": schema.integer(0),
                    "noun": schema.string,
                    "wall_seconds": schema.number,
                    "actors": schema.integer(0),
                    "device": schema.string,
                    "actors_per_gpu": schema.list_of(schema.integer(1)),
                },
            )
        ),
        "error": schema.string,
        "spec": schema.string,
    },
)


def new_job_attrs(
    input_kind: str, spec: str, inputs: Sequence[Mapping[str, Any]], model: dict[str, Any], cfg: Any, config: dict[str, Any], run: str
) -> dict[str, Any]:
    """The root's `segbatch` attribute for a new job: what it reads, how, and the runs whose writes count."""
    return {
        "version": __version__,
        "kind": JOB_KIND,
        "input_kind": input_kind,
        "spec": location.redact(spec),
        "inputs": [dict(i) for i in inputs],
        "model": {**model, "path": location.redact(str(model.get("path", "")))},
        "samples": cfg.samples,
        "seed": cfg.seed,
        "config": config,
        "status": "running",
        "runs": [run],
    }


def create_job_root(path: Location, attrs: dict[str, Any]) -> Any:
    """The job's root group with its attributes, made in place in the folder the run's lease holds (one write: whole or absent)."""
    import zarr

    try:
        # mode "a": the folder holds the lease already (the run's claim, emptied of anything else)
        return zarr.open_group(location.zarr_store(path, read_only=False), mode="a", zarr_format=3, attributes={"segbatch": attrs})
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror or exc}") from None


def update_job(root: Any, drop: tuple[str, ...] = (), **changes: Any) -> None:
    """Driver-only: change the job's attributes (inputs and their statuses, status, summary)."""
    try:
        root.attrs["segbatch"] = {k: v for k, v in {**job_attrs(root), **changes}.items() if k not in drop}
    except OSError as exc:
        raise RunError(f"writing the store failed: {exc.strerror or exc}") from None


def live_inputs(store: Location, attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The job's inputs with each group's own status and figures (what a run still going on has done so far)."""
    from segbatch.store import open_store

    def read(entry: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        where = group_location(store, entry["name"])
        if entry["status"] == "failed" or not location.exists(where):
            return out
        try:
            group = open_store(where).attrs["segbatch"]
        except (InputError, OSError, KeyError):
            return out | {"status": "failed", "error": "its group is unreadable"}
        if not isinstance(group, dict) or schema.root_problem(group) is not None:
            return out | {"status": "failed", "error": "its group's attributes were altered"}
        status = group.get("status")
        out["status"] = "complete" if status == "complete" else "failed" if status in ("failed", "damaged") else "pending"
        out["group_status"] = status
        if group.get("error"):
            out["error"] = group["error"]
        summary = group.get("summary") or {}
        out["items"] = summary.get("frames", summary.get("tiles"))
        out["problems"] = len(group.get("problems") or [])
        return out

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(read, attrs["inputs"]))


def reader_target(store: Location, name: str | None, what: str) -> tuple[dict[str, Any] | None, Location]:
    """What a reader works on, the store opened once: (the job's attributes, the job) for a whole job of many inputs
    (`name` None), else (None, the store itself or its group `name`)."""
    from segbatch.store import open_store

    root = open_store(store)
    if not is_job(root):
        if name is not None:
            raise InputError(f"--group is for job stores of many inputs; {store} holds one input")
        return None, store
    attrs = job_attrs(root)
    if name is None:
        return attrs, store
    return None, _group(store, attrs, name)


def group_of(store: Location, name: str | None, what: str) -> Location:
    """The store a reader that takes one store works on: `store` itself, or its group `name` when it is a job (which then needs one).

    `what` says what the reader does, for the message when a group is needed
    and none (or an unknown one) was named.
    """
    job, target = reader_target(store, name, what)
    if job is not None:
        names = [i["name"] for i in job["inputs"]]
        raise InputError(f"{store} is a job of {len(names)} inputs; pass --group NAME to {what} one of them ({_some(names)})")
    return target


def _group(store: Location, attrs: Mapping[str, Any], name: str) -> Location:
    """Group `name` of a job, which must be one of its inputs and have results."""
    entry = next((i for i in attrs["inputs"] if i["name"] == name), None)
    if entry is None:
        raise InputError(f"{store} has no input named {name!r} ({_some([i['name'] for i in attrs['inputs']])})")
    where = group_location(store, name)
    if not location.exists(where):
        reason = f": {entry['error']}" if entry.get("error") else ""
        raise InputError(f"input {name!r} of {store} has no results ({entry['status']}{reason})")
    return where


def _some(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > count else shown


def describe_job(path: Location) -> dict[str, Any]:
    """The summary `segbatch info JOB` prints (and `--json` emits): the job, and each input's status and figures."""
    from segbatch.lease import describe_lease
    from segbatch.store import open_store

    attrs = job_attrs(open_store(path))
    inputs = live_inputs(path, attrs)
    counts = {status: sum(1 for i in inputs if i["status"] == status) for status in INPUT_STATUSES}
    return {
        "kind": "job",
        "path": str(path),
        "version": attrs.get("version"),
        "status": attrs["status"],
        "input_kind": attrs["input_kind"],
        "spec": attrs.get("spec"),
        "model": attrs["model"],
        "samples": attrs.get("samples"),
        "seed": attrs.get("seed"),
        "counts": counts,
        "items": sum(i.get("items") or 0 for i in inputs if i["status"] == "complete"),
        "inputs": inputs,
        "summary": attrs.get("summary"),
        "error": attrs.get("error"),
        "lease": describe_lease(path),
    }
