"""index.html of an audit report: one page, inline styles, no scripts, no network; pictures are files beside it."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from segbatch.audit.scan import ScanResult

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:-1px}
td.thumbs{width:100%}.strip{display:flex;gap:4px}.strip img{flex:1 1 0;min-width:0;max-width:256px;max-height:160px;object-fit:contain;
object-position:left top;border:1px solid #ccc}.plots img{max-width:100%;margin:6px 0}
.scale img{width:160px;height:10px;border:1px solid #ccc;vertical-align:middle;margin:0 6px}
.warn{color:#a94442}.muted{color:#777}
"""


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _pct(v: Any) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def render_index(summary: dict[str, Any], result: ScanResult, thumbs: list[dict[str, str]], figures: dict[str, str]) -> str:
    """The page: key figures, problems, plots, classes, and the top items with their thumbnails."""
    m = summary["measure"]
    figures_rows = [
        ("store", escape(summary["store"])),
        ("source", f"{escape(summary['kind'])} {escape(str(summary['source']))}"),
        *_job_rows(summary),
        ("model", f"{escape(str(summary['model']['arch']))}, sha256 {escape(str(summary['model']['sha256'])[:12])}, {summary['samples']} MC samples"),
        ("calibration", _calibration(summary["model"].get("calibration"))),
        (f"{summary['item']}s", f"{summary['items']:,} ({summary['items_with_pixels']:,} with pixels)"),
        ("pixels", f"{summary['pixels']:,}"),
        (f"{m}", f"mean {_num(summary[m]['mean'])}, median {_num(summary[m]['p50'])}, 95th pct {_num(summary[m]['p95'])}, 99th pct {_num(summary[m]['p99'])}"),
        ("threshold", f"{_num(summary['threshold'])} ({escape(summary['threshold_source'])}): {_pct(summary['above_threshold'])} of pixels above"),
    ]
    if m != "entropy" and "entropy" in summary:
        e = summary["entropy"]
        figures_rows.append(("entropy", f"mean {_num(e['mean'])}, 95th pct {_num(e['p95'])} nats"))
    truth = summary["truth"]
    if truth:
        figures_rows += [
            ("truth", f"{escape(truth['source'])}: {truth['items_with_truth']:,} {summary['item']}s with truth, {truth['items_without_truth']:,} without"),
            ("accuracy / mIoU", f"{_pct(truth['accuracy'])} / {_num(truth['miou'], 3)} over {truth['pixels']:,} labelled pixels"),
            ("AUROC (errors)", ", ".join(f"{escape(k)} {_num(v, 3)}" for k, v in truth["auroc"].items()) or "–"),
            ("finds errors best", _best(truth, m)),
            ("ECE", _num(truth["ece"], 3) if truth["ece"] is not None else "– (the store has no confidence or probs array)"),
        ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>segbatch audit: {escape(summary['store'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Uncertainty audit of {escape(summary['store'])}</h1>",
        _table(figures_rows),
        "<p class='muted'>Every item is a row of <a href='items.csv'>items.csv</a>; all figures are in <a href='summary.json'>summary.json</a>.</p>",
        _problems(summary),
    ]
    if "inputs" in summary:
        parts.append(_inputs(summary))
    if truth:
        parts.append(
            "<p>AUROC is the probability that a misclassified pixel is more uncertain than a correct one (0.5: the uncertainty says nothing "
            "about errors). ECE is the pixel-weighted gap between confidence and accuracy (0: calibrated).</p>"
        )
        if truth["without_truth"]:
            listed = ", ".join(escape(n) for n in truth["without_truth"][:20])
            more = truth["items_without_truth"] - min(20, len(truth["without_truth"]))
            tail = f" and {more:,} more" if more > 0 else ""
            parts.append(f"<p class='warn'>No truth for {truth['items_without_truth']:,} {summary['item']}(s): {listed}{tail}.</p>")
        if truth["errors"]:
            parts.append("<p class='warn'>Truth that could not be used: " + "; ".join(escape(e) for e in truth["errors"][:10]) + "</p>")
    parts.append("<h2>Plots</h2><div class='plots'>" + "".join(f"<img src='{escape(f)}' alt='{escape(k)}'>" for k, f in figures.items()) + "</div>")
    parts.append(_classes(summary, result))
    parts.append(_top(summary, thumbs))
    if truth:
        parts.append(_label_errors(summary))
    parts.append("</body></html>")
    return "\n".join(parts)


def _job_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """A job's line in the key figures: how many inputs it has, how many were audited, which were skipped."""
    job = summary.get("job")
    if not job:
        return []
    text = f"{job['audited']:,} of {job['inputs']:,} audited together"
    if job["skipped"]:
        shown = ", ".join(f"{escape(s['input'])} ({escape(s['status'])})" for s in job["skipped"][:20])
        more = f" and {len(job['skipped']) - 20:,} more" if len(job["skipped"]) > 20 else ""
        text += f"; <span class='warn'>skipped, without complete results: {shown}{more}</span>"
    if job.get("without_truth"):
        text += f"; {len(job['without_truth']):,} without truth"
    return [("inputs", text)]


MAX_INPUT_ROWS = 1000  # rows of the per-input table on the page (summary.json has every input)


def _inputs(summary: dict[str, Any]) -> str:
    """A job's per-input table, least sure input first."""
    rows = summary["inputs"]
    m = summary["measure"]
    truth = bool(summary["truth"])
    head = (
        f"<tr><th>input</th><th class='num'>{escape(summary['item'])}s</th><th class='num'>mean {escape(m)}</th>"
        f"<th class='num'>above threshold</th><th>least sure {escape(summary['item'])}</th><th class='num'>problems</th>"
        + ("<th class='num'>accuracy</th><th class='num'>mIoU</th><th class='num'>ECE</th>" if truth else "")
        + "</tr>"
    )
    body = []
    for r in rows[:MAX_INPUT_ROWS]:
        least = f"{escape(r['least_sure_item'])} ({_num(r[f'least_sure_{m}_mean'])})" if r["least_sure_item"] else "–"
        extra = ""
        if truth:
            extra = (
                f"<td class='num'>{_pct(r['accuracy'])}</td><td class='num'>{_num(r['miou'], 3)}</td><td class='num'>{_num(r['ece'], 3)}</td>"
                if r.get("truth")
                else "<td class='num muted' colspan='3'>no truth</td>"
            )
        body.append(
            f"<tr><td>{escape(r['input'])}</td><td class='num'>{r['items']:,}</td><td class='num'>{_num(r[f'{m}_mean'])}</td>"
            f"<td class='num'>{_pct(r['above_threshold'])}</td><td>{least}</td><td class='num'>{r['problems']:,}</td>{extra}</tr>"
        )
    more = f"<p class='muted'>and {len(rows) - MAX_INPUT_ROWS:,} more inputs (summary.json)</p>" if len(rows) > MAX_INPUT_ROWS else ""
    return f"<h2>Inputs ({len(rows):,}, least sure first)</h2><table>{head}{''.join(body)}</table>{more}"


def _best(truth: dict[str, Any], ranked: str) -> str:
    """Which measure had the best AUROC, and whether the ranking uses it."""
    best = truth.get("best_measure")
    if best is None:
        return "– (no measure has an AUROC: the labelled pixels are all right or all wrong)"
    text = f"<b>{escape(best)}</b> (AUROC {_num(truth['auroc'][best], 3)})"
    if best == ranked:
        return text + "; the ranking uses it"
    return text + f"; the ranking uses {escape(ranked)} (AUROC {_num(truth['auroc'].get(ranked), 3)}): <code>--rank-by {escape(best)}</code> ranks by it"


def _problems(summary: dict[str, Any]) -> str:
    problems = summary.get("problems") or []
    notes = []
    if summary.get("input_thumbnails", "ok") != "ok":
        notes.append(escape(summary["input_thumbnails"]))
    for p in problems[:20]:
        notes.append(escape(", ".join(f"{k}: {v}" for k, v in p.items())))
    if len(problems) > 20:
        notes.append(f"and {len(problems) - 20} more (summary.json)")
    if not notes:
        return "<p>Store problems: none.</p>"
    return "<h2>Problems</h2><ul class='warn'>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"


def _classes(summary: dict[str, Any], result: ScanResult) -> str:
    m = summary["measure"]
    has_iou = bool(summary["truth"])
    iou_head = "<th class='num'>IoU</th>" if has_iou else ""
    head = f"<tr><th>class</th><th class='num'>pixels</th><th class='num'>share</th><th class='num'>mean {escape(m)}</th>{iou_head}</tr>"
    rows = []
    for c in summary["classes"]:
        colour = result.palette[c["class"]] if c["class"] < len(result.palette) else [128, 128, 128]
        swatch = f"<span class='sw' style='background:rgb({colour[0]},{colour[1]},{colour[2]})'></span>"
        iou = f"<td class='num'>{_num(c.get('iou'), 3)}</td>" if has_iou else ""
        rows.append(
            f"<tr><td>{swatch}{escape(c['name'])}</td><td class='num'>{c['pixels']:,}</td><td class='num'>{_pct(c['share'])}</td>"
            f"<td class='num'>{_num(c[f'mean_{m}'])}</td>{iou}</tr>"
        )
    return f"<h2>Classes</h2><table>{head}{''.join(rows)}</table>"


def _top(summary: dict[str, Any], thumbs: list[dict[str, str]]) -> str:
    m = summary["measure"]
    truth = bool(summary["truth"])
    job = "inputs" in summary
    head = (
        f"<tr><th>#</th>{'<th>input</th>' if job else ''}<th>{escape(summary['item'])}</th><th class='num'>mean {escape(m)}</th><th class='num'>95th pct</th>"
        f"<th class='num'>above threshold</th>{'<th class=num>mIoU</th><th class=num>accuracy</th>' if truth else ''}<th>input · labels · uncertainty"
        f"{' · errors' if truth else ''}</th></tr>"
    )
    rows = []
    for row, pics in zip(summary["top"], thumbs):
        images = "".join(f"<img src='{escape(path)}' alt='{escape(what)}' title='{escape(what)}'>" for what, path in pics.items())
        extra = f"<td class='num'>{_num(row.get('miou'), 3)}</td><td class='num'>{_pct(row.get('accuracy'))}</td>" if truth else ""
        where = f"<td>{escape(row['input'])}</td>" if job else ""
        rows.append(
            f"<tr><td>{row['rank']}</td>{where}<td>{escape(row['name'])}</td><td class='num'>{_num(row[f'{m}_mean'])}</td>"
            f"<td class='num'>{_num(row[f'{m}_p95'])}</td><td class='num'>{_pct(row['above_threshold'])}</td>{extra}"
            f"<td class='thumbs'><div class='strip'>{images}</div></td></tr>"
        )
    if not rows:
        return f"<h2>Most uncertain {escape(summary['item'])}s</h2><p>No {escape(summary['item'])} has pixels.</p>"
    ranking = summary.get("ranking") or {}
    how = f"ranked by mean {escape(m)}"
    if ranking.get("spacing", "none") != "none":
        how += f", {escape(ranking['spacing'])}"
    if ranking.get("filled"):
        how += f"; {ranking['filled']} more, not spaced, as the input is short"
    note = ""
    if not ranking.get("exact", True):
        note = (
            f"<p class='warn'>The picks were drawn from the {ranking['candidates']:,} highest-scoring {escape(summary['item'])}s only; "
            "a pass over every item could add more. Lower --min-gap or --top for an exact ranking.</p>"
        )
    scale = summary.get("heat_scale")
    if scale:
        note += (
            f"<p class='scale muted'>{escape(scale['measure'])} in the thumbnails: 0<img src='{escape(scale['file'])}' alt='colour scale'>"
            f"{_num(scale['max'])} and above (the store's 99th percentile)</p>"
        )
    return f"<h2>Most uncertain {escape(summary['item'])}s (top {len(rows)}, {how})</h2>{note}<table>{head}{''.join(rows)}</table>"


def _label_errors(summary: dict[str, Any]) -> str:
    """The likely label errors: how a pixel becomes suspect, the likely class swaps, and the items ranked with their pictures."""
    errors = summary["truth"].get("label_errors")
    noun = escape(summary["item"])
    if errors is None:
        return "<h2>Likely label errors</h2><p class='muted'>Not searched: the store has neither a confidence nor a probs array.</p>"
    m = escape(errors["measure"])
    parts = [
        "<h2>Likely label errors</h2>",
        f"<p>A labelled pixel is suspect when the model predicts another class at least as confidently as it usually predicts that class "
        f"correctly (the class's threshold, summary.json) while its {m} is below {_num(errors['calm_below'])}, the audit's threshold: a calm, "
        f"confident disagreement points at the label, an unsure one at a hard example. Disagreements are weighed by {escape(errors['weighed_by'])}. "
        f"An {noun}'s score is the mean weight of its suspect pixels over its labelled pixels (items.csv: label_issue_score).</p>",
        f"<p>{errors['suspect_items']:,} of {summary['truth']['items_with_truth']:,} {noun}s with truth hold {errors['suspect_pixels']:,} suspect pixels.</p>",
    ]
    if errors["swaps"]:
        swaps = "".join(
            f"<tr><td>{escape(s['truth'])}</td><td>{escape(s['model'])}</td><td class='num'>{s['pixels']:,}</td>"
            f"<td class='num'>{_pct(s['share_of_truth_class'])}</td></tr>"
            for s in errors["swaps"]
        )
        parts.append(
            "<h3>Likely swaps</h3><table><tr><th>truth says</th><th>the model says, calmly</th><th class='num'>suspect pixels</th>"
            f"<th class='num'>of the truth class's pixels</th></tr>{swaps}</table>"
        )
    if errors["ranked"]:
        job = "inputs" in summary
        head = (
            f"<tr><th>#</th>{'<th>input</th>' if job else ''}<th>{noun}</th><th class='num'>score</th><th>input · truth · prediction · suspect pixels</th></tr>"
        )
        rows = []
        for e in errors["ranked"]:
            images = "".join(f"<img src='{escape(path)}' alt='{escape(what)}' title='{escape(what)}'>" for what, path in e.get("pictures", {}).items())
            where = f"<td>{escape(e['input'])}</td>" if job else ""
            score = _num(e["label_issue_score"], 3)
            strip = f"<td class='thumbs'><div class='strip'>{images}</div></td>"
            rows.append(f"<tr><td>{e['rank']}</td>{where}<td>{escape(e['name'])}</td><td class='num'>{score}</td>{strip}</tr>")
        parts.append(f"<h3>Most likely mislabelled {noun}s (top {len(rows)}, by score)</h3><table>{head}{''.join(rows)}</table>")
    return "".join(parts)


def _calibration(found: Any) -> str:
    """Whether the store's model was calibrated (`segbatch calibrate`), and on what."""
    if not isinstance(found, dict):
        return "none: confidence and probs are the model's own (segbatch calibrate fits a temperature)"
    try:
        return escape(
            f"temperature {float(found['temperature']):.3f}, fitted by segbatch calibrate on {int(found['fit_images'])} images of "
            f"{found['images']} ({int(found['samples'])} MC samples); on {int(found['held_out_images'])} held-out images "
            f"ECE {float(found['ece_before']):.4f} -> {float(found['ece_after']):.4f}, NLL {float(found['nll_before']):.4f} -> {float(found['nll_after']):.4f}"
        )
    except (KeyError, TypeError, ValueError):
        return "recorded, but not in a form this version reads"
