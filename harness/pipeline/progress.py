"""What ``python -m harness reproduce`` shows while it runs: one progress display.

* :class:`Progress` — experiment k of n, the training run in progress (step i of m), time elapsed
  and an ETA. On a terminal it is one live line (tqdm) under the status lines; elsewhere (a log,
  CI, the tests) it prints the status lines only, with the ETA on each experiment's first line and
  one line per training run started.
* :func:`capture_output` — everything else the experiments print (evaluation and benchmark
  output, library warnings, progress bars of other libraries) goes to a log file instead of the
  terminal.

The ETA weighs each experiment by its wall time in an earlier run (this run folder's ``meta.json``,
else the committed reference's), scaled by how fast this machine has been on the experiments run
so far; experiments that are up to date take no time.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """The progress display of one pipeline invocation over the experiments ``names``.

    ``estimates``: an earlier wall time (seconds) per experiment, where one is known. ``live``:
    draw a live bar (default: when ``out`` is a terminal)."""

    def __init__(self, names: list[str], estimates: dict[str, float], out: TextIO, live: bool | None = None) -> None:
        self.names, self.out = list(names), out
        self.live = bool(getattr(out, "isatty", lambda: False)()) if live is None else live
        known = [v for n, v in estimates.items() if n in self.names and v and v > 0]
        self.measured = bool(known)
        typical = statistics.median(known) if known else 1.0
        self.weight = {n: float(estimates.get(n) or typical) for n in self.names}
        self.start = time.monotonic()
        self.finished: set[str] = set()
        self.ran_weight = self.ran_time = 0.0
        self.current, self.current_start, self.k = "", self.start, 0
        self.run_label = ""
        self.announced: set[str] = set()
        self._lock = threading.Lock()
        self._drawn = 0.0
        self.bar = tqdm(
            desc=f"[reproduce] experiment 0/{len(self.names)}",
            total=1000,
            file=out,
            disable=not self.live,
            dynamic_ncols=True,
            bar_format="{desc} |{bar:12}| {percentage:3.0f}%",
            leave=False,
        )
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True) if self.live else None
        if self._ticker:
            self._ticker.start()

    # -- estimates ---------------------------------------------------------------------------------
    def eta(self) -> str:
        """Time left, ``?`` while nothing is known; ``~`` marks an estimate from earlier runs only."""
        remaining = sum(w for n, w in self.weight.items() if n not in self.finished)
        in_current = time.monotonic() - self.current_start if self.current else 0.0
        if self.ran_weight > 0:
            return clock(max(0.0, remaining * self.ran_time / self.ran_weight - in_current))
        if self.measured:
            return "~" + clock(max(0.0, remaining - in_current))
        return "?"

    def fraction(self) -> float:
        total = sum(self.weight.values()) or 1.0
        return sum(self.weight[n] for n in self.finished) / total

    # -- events ------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A status line (above the live bar)."""
        with self._lock:
            if self.live:
                self.bar.write(text, file=self.out)
            else:
                print(text, file=self.out, flush=True)

    def begin(self, name: str) -> str:
        """Experiment ``name`` starts; returns its ``[k/n] name`` tag for status lines."""
        self.k = self.names.index(name) + 1
        self.current, self.current_start, self.run_label = name, time.monotonic(), ""
        self._draw()
        return f"[{self.k}/{len(self.names)}] {name}"

    def training(self, label: str, step: int, total: int) -> None:
        """Training run ``label`` finished optimizer step ``step`` of ``total``."""
        if label not in self.announced:
            self.announced.add(label)
            if not self.live:
                self.say(f"[reproduce]     training {label} ({total} steps)")
        self.run_label = f"{label} step {step}/{total}"
        if time.monotonic() - self._drawn >= 0.1 or step == total:  # at most ~10 redraws a second
            self._draw()

    def end(self, name: str, ran: bool) -> None:
        """Experiment ``name`` is done (``ran``: it ran, rather than being up to date)."""
        if ran:
            self.ran_weight += self.weight[name]
            self.ran_time += time.monotonic() - self.current_start
        else:
            self.weight[name] = 0.0  # took no time: not part of the ETA
        self.finished.add(name)
        self.current, self.run_label = "", ""
        self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join(timeout=2)
        self.bar.close()

    # -- drawing -----------------------------------------------------------------------------------
    def _draw(self) -> None:
        if not self.live:
            return
        with self._lock:
            run = f" · {self.run_label}" if self.run_label else ""
            elapsed = clock(time.monotonic() - self.start)
            self.bar.set_description_str(
                f"[reproduce] experiment {self.k}/{len(self.names)} {self.current}{run} · elapsed {elapsed} · "
                f"ETA {self.eta()}",
                False,
            )
            self.bar.n = int(1000 * self.fraction())
            self.bar.refresh()
            self._drawn = time.monotonic()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._draw()


def _stream_handlers(streams: tuple[TextIO, ...]) -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [
        h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and h.stream in streams
    ]


class _LogStream:
    """Stands in for stdout/stderr: writes to the log while captured, to ``fallback`` afterwards
    (for anything that kept a reference, such as a logging handler created meanwhile)."""

    def __init__(self, log: TextIO, fallback: TextIO) -> None:
        self.log: TextIO | None = log
        self.fallback = fallback

    def write(self, text: str) -> int:
        target = self.log if self.log is not None else self.fallback
        return target.write(text)

    def flush(self) -> None:
        (self.log if self.log is not None else self.fallback).flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return (self.log if self.log is not None else self.fallback).fileno()

    @property
    def encoding(self) -> str:
        return "utf-8"


@contextlib.contextmanager
def capture_output(log_path: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """Send what is printed (stdout, stderr, logging to them) to ``log_path`` (appended) while
    inside; yields the real (stdout, stderr) for the status lines and the progress display."""
    out, err = sys.stdout, sys.stderr
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        streams = (_LogStream(log, out), _LogStream(log, err))
        handlers = []
        for h in _stream_handlers((out, err, sys.__stdout__, sys.__stderr__)):
            with contextlib.suppress(AttributeError):  # logging's last resort follows sys.stderr itself
                handlers.append((h, h.setStream(streams[1])))  # type: ignore[arg-type]
        sys.stdout, sys.stderr = streams  # type: ignore[assignment]
        try:
            yield out, err
        finally:
            sys.stdout, sys.stderr = out, err
            for h, old in handlers:
                h.setStream(old)
            for s in streams:
                s.log = None
