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


def test_store_text_with_newlines_and_control_characters_stays_on_one_line():
    problems = [
        {"kind": "unreadable", "path": "evil\nwarning: all good.png", "image": 0, "error": "bad\r\x1b[32mdata\t(OSError)"},
        {"frames": [0, 8], "missing": [[3, 5]], "damaged": [], "messages": ["line one\nline two\x07"]},
        {"kind": "odd\nkind", "detail": "x\u2028y"},
    ]
    lines = problem_lines(problems)
    assert len(lines) == len(problems)
    assert all(line.isprintable() for line in lines), lines  # no raw newline, CR, tab, ESC, BEL or line separator
    assert lines[0] == "evil\\nwarning: all good.png: bad\\r\\x1b[32mdata\\t(OSError)"
    assert lines[1] == "frames 3:5 missing (line one\\nline two\\x07)"
    assert "\\u2028" in lines[2] and "odd\\nkind" in lines[2]
    assert problem_counts([problems[2]]).isprintable()
