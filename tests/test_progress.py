"""Progress on stderr: plain lines with how far and an ETA when stderr is not a terminal."""

import io
import re

from big2small import progress


def test_piped_progress_is_plain_lines_with_an_eta(monkeypatch):
    err = io.StringIO()  # not a terminal, as a pipe or a log file
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # a line per step, to see each one
    with progress.progress_bar("perplexity", 4, unit="windows") as advance:
        for _ in range(4):
            advance(1)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("perplexity: 0/4 windows (0%)") and "ETA ?" in lines[0]
    assert re.fullmatch(r"perplexity: 1/4 windows \(25%\), \d:\d\d:\d\d elapsed, ETA \d:\d\d:\d\d", lines[1])
    assert lines[-1].startswith("perplexity: 4/4 windows (100%)") and lines[-1].endswith("done")
    assert "\x1b" not in err.getvalue()  # no terminal control codes in a log


def test_piped_progress_is_rate_limited(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with progress.progress_bar("compressing", 10_000) as advance:
        for _ in range(10_000):
            advance(1)
    assert len(err.getvalue().splitlines()) == 2  # the start and the end: a fast loop says no more


def test_disabled_progress_writes_nothing(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with progress.progress_bar("x", 3, enabled=False) as advance:
        advance(3)
    assert err.getvalue() == ""
