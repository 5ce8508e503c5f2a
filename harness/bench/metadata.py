"""Where and how a benchmark ran: recorded on every result row."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: Path = REPO_ROOT) -> tuple[str, bool | None]:
    """(commit hash, working tree has uncommitted changes) or ("unknown", None) outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """A readable name of ``device``: the GPU's model, or ``cpu (<model>, <n> logical cores)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({cpu_model()}, {os.cpu_count()} logical cores)"
    return str(device)


def collect(device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """Metadata fields carried by every result row."""
    import transformers

    commit, dirty = git_commit()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "cuda_version": torch.version.cuda if device.type == "cuda" else None,
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "argv": " ".join(sys.argv[1:]),
    }


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
