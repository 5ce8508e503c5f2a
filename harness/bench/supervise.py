"""Supervision of a command-line sweep: the measuring runs in a child process that a parent watches.

A single long operation (e.g. the backward pass of a huge autograd graph) cannot be interrupted from
inside Python: ``SIGALRM`` is only handled between operations. So ``python -m harness bench`` runs the
sweep in a child process that writes a *heartbeat* file naming the phase point it measures and its
hard deadline. If the child is still inside that point well past the deadline, or dies (a crash, the
kernel's OOM killer), the parent kills it, records the point as skipped (``timeout`` / ``error``) in
the results file and starts the child again; the new child resumes from the results file, so the
sweep always finishes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.bench.store import ResultStore

MAX_RESTARTS = 50


def is_command_line() -> bool:
    """Whether this process is ``python -m harness`` (not an in-process call from tests or code)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return argv0 is not None and argv0.name == "__main__.py" and argv0.parent.name == "harness"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _record(store_path: Path, beat: dict[str, Any], kind: str, reason: str) -> None:
    row = dict(beat["row"])
    row.update(status="skipped", skip_kind=kind, skip_reason=reason)
    ResultStore(store_path).put(row)
    print(f"  skip {row['phase']:<7} [{kind}] {reason} ({row['shape']} {row['method']} L={row['seq_len']})", flush=True)


def supervise(child_argv: list[str], heartbeat: Path, store_path: Path, grace_s: float = 15.0) -> int:
    """Run ``python -m harness <child_argv>`` until it finishes, restarting it past stuck or dead points.
    Returns the child's exit status."""
    for _ in range(MAX_RESTARTS + 1):
        heartbeat.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "harness", *child_argv])
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                beat = _read(heartbeat)
                if beat and time.time() > beat["deadline"] + grace_s:
                    proc.kill()
                    proc.wait()
                    _record(
                        store_path,
                        beat,
                        "timeout",
                        f"killed by the supervisor: one operation ran past the hard deadline of "
                        f"{beat['hard_s']:.0f} s + {grace_s:.0f} s",
                    )
                    break
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            return 130
        rc = proc.returncode
        beat = _read(heartbeat)
        if beat is None:  # finished (or failed) outside any point: done
            return rc
        if rc != -signal.SIGKILL or time.time() <= beat["deadline"] + grace_s:  # it died by itself
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            _record(store_path, beat, "error", f"the measuring process died ({how}) in this point")
        print("bench: restarting the sweep after that point (the results file keeps every finished point)", flush=True)
    print(f"bench: gave up after {MAX_RESTARTS} restarts", file=sys.stderr, flush=True)
    return 1
