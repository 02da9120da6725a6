"""Store problems in words: one line each, long lists cut short, every kind (and entries older than kinds)."""

from segbatch.problems import problem_counts, problem_lines


def test_long_lists_show_ten_lines_then_how_many_more():
    problems = [{"kind": "unreadable", "path": f"img{i:02d}.png", "image": i, "error": "unreadable image (OSError)"} for i in range(25)]
    lines = problem_lines(problems)
    assert len(lines) == 11 and lines[0] == "img00.png: unreadable image (OSError)" and lines[-1] == "and 15 more"
    assert problem_counts(problems) == "25 unreadable images"


def test_every_kind_reads_as_one_line():
    frames = {"frames": [0, 8], "missing": [[3, 5]], "damaged": [[6, 7]], "messages": ["Invalid NAL unit size"]}  # no kind: written before kinds
    tiles = {"kind": "skipped_tiles", "reason": "all nodata", "tiles": [[i * 3, i * 3 + 2] for i in range(12)], "count": 24}
    assert problem_lines([frames]) == ["frames 3:5 missing, frames 6:7 decoded with errors (Invalid NAL unit size)"]
    assert problem_lines([tiles]) == ["24 tiles skipped (all nodata): tiles 0:2, 3:5, 6:8, 9:11, 12:14, 15:17, 18:20, 21:23, 24:26, 27:29 and 2 more ranges"]
    assert problem_counts([frames, tiles]) == "1 unit with missing or damaged frames; 24 tiles skipped (all nodata)"
    assert problem_counts([]) == "none"
