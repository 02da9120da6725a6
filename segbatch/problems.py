"""The problems a run records in a store (attrs `problems`), in words: one line each, for warnings and `segbatch info`.

Kinds: "frames" (a video unit's missing or damaged frames; with reason
"truncated", the frames a cut-short file's index declares but its data lacks), "unreadable" (an
image that could not be segmented), "skipped_tiles" (raster tiles with no
valid pixel). Entries written before kinds existed are video frame entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MAX_LINES = 10  # a long list shows this many, then "and N more"


def printable(text: object) -> str:
    r"""`text` on one line for a terminal: newlines, tabs and other control or invisible characters as escapes (\n, \x1b, \u2028).

    Store text (file names, decoder messages) comes from outside: a name with a
    newline must not read as two problems, nor an escape sequence recolour the terminal.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def problem_lines(problems: Sequence[dict[str, Any]], limit: int = MAX_LINES) -> list[str]:
    """One line per problem (store text escaped to stay on it), the first `limit` of them, then "and N more"."""
    lines = [printable(_line(p)) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"and {len(problems) - limit} more")
    return lines


def problem_counts(problems: Sequence[dict[str, Any]]) -> str:
    """What the problems amount to, per kind: "2 unreadable images; 1 unit with frame errors"; "none" when there are none."""
    counts: dict[str, int] = {}
    for p in problems:
        kind = p.get("kind", "frames")
        if kind == "frames" and p.get("reason") == "truncated":  # not a unit: the frames a cut-short file lacks
            kind = "truncated"
            counts[kind] = counts.get(kind, 0) + sum(b - a for a, b in p.get("missing", []))
            continue
        counts[kind] = counts.get(kind, 0) + (int(p.get("count", 0)) if kind == "skipped_tiles" else 1)
    words = {
        "frames": ("unit with missing or damaged frames", "units with missing or damaged frames"),
        "unreadable": ("unreadable image", "unreadable images"),
        "skipped_tiles": ("tile skipped (all nodata)", "tiles skipped (all nodata)"),
        "truncated": ("frame missing (the file is truncated)", "frames missing (the file is truncated)"),
    }
    parts = [f"{n} {words.get(kind, (printable(kind), printable(kind)))[n != 1]}" for kind, n in counts.items()]
    return "; ".join(parts) or "none"


def _line(p: dict[str, Any]) -> str:
    kind = p.get("kind", "frames")
    if kind == "frames":
        parts = [f"frames {a}:{b} missing" for a, b in p.get("missing", [])] + [f"frames {a}:{b} decoded with errors" for a, b in p.get("damaged", [])]
        why = [p["reason"]] if p.get("reason") else []  # e.g. "truncated": frames a cut-short file lacks
        why += [p["messages"][0]] if p.get("messages") else []
        return ", ".join(parts) + (f" ({': '.join(why)})" if why else "")
    if kind == "unreadable":
        return f"{p['path']}: {p['error']}"
    if kind == "skipped_tiles":
        ranges = [f"{a}:{b}" for a, b in p["tiles"][:MAX_LINES]]
        more = f" and {len(p['tiles']) - MAX_LINES} more ranges" if len(p["tiles"]) > MAX_LINES else ""
        return f"{p['count']} tiles skipped ({p.get('reason', 'all nodata')}): tiles {', '.join(ranges)}{more}"
    return f"{kind}: {p}"


def index_ranges(indices: Iterable[int]) -> list[list[int]]:
    """[3, 4, 5, 9] -> [[3, 6], [9, 10]]: half-open ranges (of frames, tiles), compact in attributes."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out
