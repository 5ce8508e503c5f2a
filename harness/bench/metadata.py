"""Where and how a benchmark ran: recorded on every result row."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys

import torch

from harness.provenance import REPO_ROOT, cpu_model, git_commit  # noqa: F401 (re-exported)


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
