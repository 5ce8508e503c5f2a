"""Where a result came from, the one collector in the suite: :func:`environment` gives the same keys
to every result (benchmarks, evaluations, training summaries, experiment reports, the op-speed
table), so two results can be compared field by field.

Keys (always): ``git_commit`` (the commit hash, ``+dirty`` when tracked files have uncommitted
changes, ``unknown`` outside git), ``date`` (UTC, ISO 8601, seconds), ``python``, ``platform``,
``cpu`` (the CPU model), ``threads`` (torch's intra-op threads), and one ``<package>: <version>``
per requested package (default ``torch``, ``transformers``). With a device: ``device`` (its type),
``device_name`` (the GPU model, or the CPU model and core count) and ``cuda`` (the CUDA runtime
version, on CUDA devices); with a dtype: ``dtype``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
#: packages whose versions :func:`environment` records by default
DEFAULT_PACKAGES: tuple[str, ...] = ("torch", "transformers")


#: what "dirty" means: uncommitted changes (or new files) where the code and definitions that produce
#: results live; edits to results, notebooks or documentation do not make a run dirty
SOURCE_PATHS: tuple[str, ...] = (
    "harness",
    "dijiang",
    "baselines",
    "analyses",
    "experiments",
    "configs",
    "pyproject.toml",
    "requirements.lock",
    "requirements-data.lock",
    "reproduce.sh",
)


def git_commit(root: Path = REPO_ROOT) -> tuple[str, bool | None]:
    """(commit hash, the source (:data:`SOURCE_PATHS`) has uncommitted changes or new files) or
    ("unknown", None) outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal", "--", *SOURCE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def commit_label(root: Path = REPO_ROOT) -> str:
    """The commit hash with ``+dirty`` when the source has uncommitted changes (``unknown`` outside git)."""
    commit, dirty = git_commit(root)
    return commit + ("+dirty" if dirty else "")


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


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_version(name: str) -> str:
    """``name.__version__`` of an importable package, ``unknown`` if it has none, ``not installed``."""
    try:
        return str(getattr(importlib.import_module(name), "__version__", "unknown"))
    except ImportError:
        return "not installed"


def environment(
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    packages: Sequence[str] = DEFAULT_PACKAGES,
) -> dict[str, Any]:
    """The provenance record of a result (keys: see the module docstring)."""
    meta: dict[str, Any] = {
        "git_commit": commit_label(),
        "date": utc_now(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
    }
    meta.update({name: package_version(name) for name in packages})
    if device is not None:
        device = torch.device(device)
        meta.update(
            device=device.type,
            device_name=device_name(device),
            cuda=torch.version.cuda if device.type == "cuda" else None,
        )
    if dtype is not None:
        meta["dtype"] = str(dtype).removeprefix("torch.")
    return meta
