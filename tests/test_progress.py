"""The pipeline's progress display and output capture (harness/pipeline/progress.py)."""

from __future__ import annotations

import io
import logging
import sys

from harness.pipeline import progress
from harness.pipeline.progress import Progress, capture_output, clock


class Clock:
    """A hand-driven time.monotonic."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_scales_earlier_timings_by_this_machines_speed(monkeypatch):
    t = Clock()
    monkeypatch.setattr(progress.time, "monotonic", t)
    out = io.StringIO()
    p = Progress(["a", "b", "c"], {"a": 10.0, "b": 30.0}, out)  # c: unknown, takes the median (20)
    assert not p.live and p.eta() == "~1:00"  # from the earlier run only
    p.begin("a")
    t.now += 20  # this machine: twice as slow as the earlier run
    p.end("a", ran=True)
    assert p.eta() == "1:40"  # (30 + 20) x 2
    p.begin("b")
    p.end("b", ran=False)  # up to date: takes no time
    assert p.eta() == "0:40"
    p.close()


def test_without_estimates_the_eta_is_unknown_until_something_ran():
    p = Progress(["a", "b"], {}, io.StringIO())
    assert p.eta() == "?"
    p.close()


def test_status_lines_off_a_terminal(monkeypatch):
    out = io.StringIO()
    p = Progress(["a", "b"], {}, out)
    tag = p.begin("b")
    assert tag == "[2/2] b"
    p.training("convert-x", 1, 4)
    p.training("convert-x", 2, 4)
    p.say("[reproduce] hello")
    p.close()
    assert out.getvalue().splitlines() == ["[reproduce]     training convert-x (4 steps)", "[reproduce] hello"]


def test_clock():
    assert clock(5) == "0:05" and clock(125) == "2:05" and clock(3725) == "1:02:05"


def test_capture_sends_prints_and_logging_to_the_log(tmp_path, capsys):
    logger = logging.getLogger("test-progress-capture")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with capture_output(tmp_path / "x.log") as (out, _err):
            print("to the log")
            logger.warning("a library warning")
            print("to the terminal", file=out)
        assert handler.stream is sys.stderr  # restored
    finally:
        logger.removeHandler(handler)
    log = (tmp_path / "x.log").read_text()
    assert "to the log" in log and "a library warning" in log
    captured = capsys.readouterr()
    assert captured.out == "to the terminal\n" and "a library warning" not in captured.err
