"""`segbatch info`: a human summary of a store or a checkpoint (with --json, the same for machines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import LOCATION, FileRefused, json_opt

MAX_INPUT_ROWS = 20  # inputs listed in the text of a job's summary (--json lists all)


@click.command()
@click.argument("path", type=LOCATION)
@click.option("--group", metavar="NAME", help="A job of many inputs: summarise the group of input NAME.")
@json_opt
def info(path: Path | str, group: str | None, as_json: bool) -> None:
    """Summarise a store (a folder), a job of many inputs, one input of a job (--group), or a checkpoint (a file)."""
    from segbatch import location

    if not location.exists(path):
        raise FileRefused(f"{path}: no such store or checkpoint")
    if location.is_dir(path):
        from segbatch.describe import describe_store
        from segbatch.jobstore import describe_job, reader_target

        job, target = reader_target(path, group, "summarise")
        summary, text = (describe_job(path), format_job) if job is not None else (describe_store(target), format_store)
        if job is None and summary["status"] != "complete":
            summary["resume_command"] = resume_command(summary, "--resume" if summary["resumable"] else "--overwrite")
    else:
        from segbatch.model.checkpoint import load_checkpoint

        summary = load_checkpoint(path).describe()
        text = format_checkpoint
    click.echo(json.dumps(summary, indent=2) if as_json else text(summary))


def format_store(s: dict[str, Any]) -> str:
    """The `info` text for a store: status, source, model, arrays, problems (per kind, long lists cut short)."""
    from segbatch.kinds import KINDS
    from segbatch.problems import printable, problem_counts, problem_lines

    src, model = s.get("source") or {}, s.get("model") or {}
    rows = [
        ("store", printable(s["path"])),
        ("status", f"{s['status']} ({s['units']['finished']}/{s['units']['total']} units finished)"),
        *([("error", printable(s["error"]))] if s.get("error") and s["status"] != "complete" else []),
        *([("run", _lease_line(s["lease"]))] if s.get("lease") and not s["lease"]["released"] else []),
        *([(_finish_word(s), printable(s["resume_command"]))] if s.get("resume_command") and not (s.get("lease") or {}).get("live") else []),
        ("source", f"{src.get('kind')} {printable(src.get('path'))}"),
        ("model", f"{model.get('arch')} ({len(model.get('classes', []))} classes, sha256 {str(model.get('sha256'))[:12]})"),
        ("samples", f"{s['samples']} (seed {s['seed']})"),
    ]
    if src.get("kind") in KINDS:
        rows += KINDS[src["kind"]].info_rows(src)
    for name, a in s["arrays"].items():
        rows.append((name, f"{a['dtype']} ({', '.join(f'{d}={n}' for d, n in zip(a['dims'], a['shape']))}) chunks {a['chunks']}"))
    summary = s.get("summary") or {}
    # every figure is optional (a store made before it was recorded lacks it): "?" where one is missing
    on = f"on {summary.get('actors', '?')} actor(s) [{summary.get('device', '?')}]{_sharing(summary)}"
    if summary.get("inference_seconds") is not None:
        rows.append(
            (
                "run",
                f"{summary.get('tiles', '?')} tiles ({summary.get('skipped_tiles', 0)} all nodata) in {summary['inference_seconds']:.1f} s, "
                f"stitched in {summary.get('stitch_seconds') or 0:.1f} s more {on}",
            )
        )
    if summary.get("stitch_task_seconds") is not None:
        rows.append(
            (
                "stitch",
                f"{summary['stitch_task_seconds']:.1f} s of stitch tasks, {summary.get('stitch_overlap') or 0:.0%} of it overlapped inference; "
                f"{_tile_reads(summary)}at most {summary.get('tiles_peak', '?')} of {summary.get('tiles', '?')} tiles in tiles/ at once",
            )
        )
    if summary.get("wall_seconds"):
        noun = f"{KINDS[src['kind']].noun}s" if src.get("kind") in KINDS else "frames"  # the summary counts its items under that name
        rows.append(("run", f"{summary.get(noun, '?')} {noun} in {summary['wall_seconds']:.1f} s {on}"))
    if (summary.get("stages") or {}).get("seconds"):
        rows.append(("stages", _stages_line(summary["stages"])))
    problems = s.get("problems") or []
    counts = problem_counts(problems)
    rows.append(("problems", "the video ends early" if counts == "none" and src.get("demux_error") else counts))
    if src.get("demux_error"):
        rows.append(("", f"the file ends early: {src['demux_error']}"))
    rows.extend(("", line) for line in problem_lines(problems))
    return "\n".join(f"{k:<12} {v}" for k, v in rows)


def format_job(s: dict[str, Any]) -> str:
    """The `info` text for a job of many inputs: its status, the inputs done and failed, then one row per input (the failed first)."""
    from segbatch.problems import printable

    model, counts, summary = s.get("model") or {}, s["counts"], s.get("summary") or {}
    total = sum(counts.values())
    rows = [
        ("store", printable(s["path"])),
        ("status", f"{s['status']}: {counts['complete']} of {total} {s['input_kind']} inputs complete, {counts['failed']} failed, {counts['pending']} to do"),
        *([("run", _lease_line(s["lease"]))] if s.get("lease") and not s["lease"]["released"] else []),
        ("inputs", printable(str(s.get("spec")))),
        ("model", f"{model.get('arch')} ({len(model.get('classes', []))} classes, sha256 {str(model.get('sha256'))[:12]})"),
        ("samples", f"{s['samples']} (seed {s['seed']})"),
    ]
    if summary.get("wall_seconds") is not None:
        done = f"{summary['items']} {summary.get('noun', 'item')}s in {summary['wall_seconds']:.1f} s"
        rows.append(("run", f"{done} on {summary['actors']} actor(s) [{summary['device']}]{_sharing(summary)}"))
    if s.get("error"):
        rows.append(("error", printable(s["error"])))
    lines = [f"{k:<12} {v}" for k, v in rows]
    order = {"failed": 0, "pending": 1, "complete": 2}
    shown = sorted(s["inputs"], key=lambda i: order[i["status"]])[:MAX_INPUT_ROWS]
    width = max((len(i["name"]) for i in shown), default=0)
    for i in shown:
        detail = printable(i["error"]) if i.get("error") else f"{i.get('items') or 0} items, {i.get('problems') or 0} problems"
        lines.append(f"  {printable(i['name']):<{width}}  {i['status']:<8} {detail}")
    if len(s["inputs"]) > len(shown):
        lines.append(f"  ... and {len(s['inputs']) - len(shown)} more (--json lists them all; --group NAME for one)")
    return "\n".join(lines)


def format_checkpoint(s: dict[str, Any]) -> str:
    """The `info` text for a checkpoint: one fact per line, names aligned."""
    rows = [
        ("checkpoint", s["path"]),
        ("arch", f"{s['arch']} (width {s['width']:g}, {s['in_channels']} input bands)"),
        ("parameters", f"{s['parameters']:,}"),
        ("dropout", f"{s['dropout']['placement']}, p={s['dropout']['p']:g}"),
        ("classes", f"{len(s['classes'])}: {', '.join(s['classes'])}"),
        ("input mean", " ".join(f"{v:.3f}" for v in s["input_normalisation"]["mean"])),
        ("input std", " ".join(f"{v:.3f}" for v in s["input_normalisation"]["std"])),
    ]
    lrn = s["input_normalisation"].get("lrn")
    if lrn:
        rows.append(("input LRN", ", ".join(f"{k} {v:g}" for k, v in lrn.items())))
    rows.append(("sha256", s["sha256"]))
    provenance = s.get("provenance", {})
    training = provenance.get("training")
    if isinstance(training, dict) and "epoch" in training:
        rows.append(("trained", f"epoch {training['epoch']}, validation mIoU {training.get('val_miou', float('nan')):.3f}"))
    if provenance.get("imported_from"):  # an imported model: the files it came from and the input they expect
        formats = provenance.get("layer_format") or {}
        files = []
        for key in ("prototxt", "caffemodel"):
            source = provenance.get(key) or {}
            legacy = " (legacy V1 layers)" if str(formats.get(key, "")).startswith("legacy") else ""
            files.append(f"{source.get('name')} (sha256 {str(source.get('sha256'))[:12]}){legacy}")
        rows.append(("imported", f"from {provenance['imported_from']}: {files[0]}"))
        rows.append(("", f"and {files[1]}"))
        given = provenance.get("input") or {}
        if given:
            order = "".join(given.get("channel_order", ""))
            means = " ".join(f"{v:g}" for v in given.get("mean", []))
            label = f" ({', '.join(order)})" if order == "BGR" else ""
            rows.append(("input", f"{order} {given.get('range', '')}, mean {means}{label} subtracted, then scale {given.get('scale', 1):g}"))
        if provenance.get("batch_norm"):
            rows.append(("batch norm", "; ".join(provenance["batch_norm"])))
        if provenance.get("dropout_sampled_at_test"):
            rows.append(("", "its Dropout layers sample at test time (sample_weights_test): a Bayesian model"))
    return "\n".join(f"{k:<11} {v}" for k, v in rows)


def _lease_line(lease: dict[str, Any]) -> str:
    """Who holds the store: a live run, or one that stopped without letting go (its lease is taken over by the next run)."""
    state = "in progress" if lease["live"] else "stopped without releasing the store"
    line = f"{state}: run {lease['run']} on {lease['host']} (pid {lease['pid']}), heartbeat {lease['heartbeat_age_s']:.0f} s ago"
    if lease.get("guard") == "read-back":
        line += "; claimed by write and read-back (this object store has no conditional writes)"
    return line


def _finish_word(s: dict[str, Any]) -> str:
    return "resume" if s.get("resumable", True) else "rerun"


def resume_command(s: dict[str, Any], finish: str = "--resume") -> str:
    """The command that finishes the store `info` describes (`finish`: --resume, or --overwrite for a raster whose tiles are gone):
    its input, output and model, and the options its configuration holds (an option at its default is left out; --resume refuses
    any that differs, naming it)."""
    import shlex

    src, model, config = s.get("source") or {}, s.get("model") or {}, s.get("config") or {}
    args: list[Any] = ["segbatch", "run", "--input", src.get("path"), "--out", s["path"]]
    args += ["--model", model["path"]] if isinstance(model.get("path"), str) else []
    args += ["--samples", s["samples"], "--seed", s["seed"]]
    get = config.get if isinstance(config, dict) else {}.get

    def given(key: str, kind: type) -> Any:
        value = get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    whole = [0, src.get("frames")]
    frames, resize, outputs, bands = given("frames", list), given("resize", list), given("outputs", list), given("bands", list)
    options = [
        ("--batch-size", given("batch_size", int), 4),
        ("--frames", f"{frames[0]}:{frames[1]}" if frames and len(frames) == 2 and frames != whole else None, None),
        ("--resize", "x".join(map(str, resize)) if resize else None, None),
        ("--outputs", ",".join(str(o) for o in outputs if o in ("mutual_information", "probs")) if outputs else None, ""),
        ("--precision", given("precision", str), "fp32"),
        ("--hwaccel", given("hwaccel", str), None),
        ("--bands", ",".join(map(str, bands)) if bands else None, None),
        ("--tile", given("tile", int), 512),
        ("--overlap", given("overlap", int), 64),
    ]
    args += [part for flag, value, default in options if value is not None and value != default for part in (flag, value)]
    args += ["--float32"] if get("float_dtype") == "float32" else []
    return shlex.join([*map(str, args), finish])


def _stages_line(stages: dict[str, Any]) -> str:
    """Worker seconds per pipeline stage over the whole run, largest first, and the stage that bounds it."""
    seconds = stages["seconds"]
    parts = ", ".join(f"{name} {value:.1f} s" for name, value in sorted(seconds.items(), key=lambda kv: -kv[1]))
    return f"{parts} (bottleneck: {stages.get('bottleneck')})"


def _sharing(summary: dict[str, Any]) -> str:
    """', 1 GPU, 3 actors each' when the run recorded how its actors shared the GPUs (`--actors-per-gpu`)."""
    from segbatch.engine.outcome import shared

    counts = summary.get("actors_per_gpu")
    return f", {shared(counts)}" if counts else ""


def _tile_reads(summary: dict[str, Any]) -> str:
    """'tiles read back 1.1 times each; ' when the run counted the stitch's reads of tiles/ (a store made before did not)."""
    reads, written = summary.get("stitch_tile_reads"), (summary.get("tiles") or 0) - (summary.get("skipped_tiles") or 0)
    return f"tiles read back {reads / written:.1f} times each; " if reads is not None and written > 0 else ""
