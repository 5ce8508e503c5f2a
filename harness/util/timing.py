"""Timing primitives, the one copy in the suite: the benchmark sweep (:mod:`harness.bench.measure`),
the DiJiang op-speed table (:mod:`dijiang.speed`) and the generation throughput of trained models
(:mod:`harness.pipeline.throughput`) all time through these.

* :func:`synchronize` / :func:`time_once` — the clock is read only after queued device work has
  finished (``torch.cuda.synchronize``), as ``torch.utils.benchmark`` does;
* :func:`time_round_robin` — repeats of several functions interleaved, so slow phases of a shared
  machine hit them alike;
* :func:`set_malloc_policy` — glibc's allocator policy, the one place that sets it. Two policies,
  each right for one kind of measurement (so they never mix in one process):

  - ``"return"``: allocations of 64 KiB or more are served by ``mmap`` and freed heap memory is
    trimmed, so freed memory leaves the process and a run's *peak resident memory* can be read
    (the benchmark's memory columns; :func:`harness.bench.measure.prepare_cpu_memory`);
  - ``"keep"``: freed memory stays in the process for reuse (``M_MMAP_THRESHOLD`` 256 MiB,
    ``M_TRIM_THRESHOLD`` 1 GiB), what PyTorch's CPU performance guide gets by switching to
    jemalloc/tcmalloc: large tensors do not page-fault afresh on every call (the op-speed table's
    ``--keep-freed-memory``; about 1.4 us per 4 KiB page measured on this suite's VMs).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import torch

#: glibc ``mallopt`` parameters (``<malloc.h>``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: policy -> (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) in bytes; see the module docstring
MALLOC_POLICIES: dict[str, tuple[int, int]] = {
    "return": (64 * 1024, 128 * 1024),
    "keep": (256 << 20, 1 << 30),
}

_LIBC: Any = None


def libc() -> Any:
    """glibc loaded through ctypes, or ``False`` where there is none (macOS, musl ...)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def set_malloc_policy(policy: str) -> bool:
    """Set glibc's allocator policy for this whole process (``"return"`` or ``"keep"``; see the module
    docstring). Permanent: only for a process that does nothing but measure. Returns whether glibc
    accepted it (False without glibc)."""
    if policy not in MALLOC_POLICIES:
        raise ValueError(f"unknown malloc policy {policy!r}; choose one of {sorted(MALLOC_POLICIES)}")
    lib = libc()
    if not lib:
        return False
    mmap, trim = MALLOC_POLICIES[policy]
    try:
        return bool(lib.mallopt(M_MMAP_THRESHOLD, mmap)) and bool(lib.mallopt(M_TRIM_THRESHOLD, trim))
    except AttributeError:
        return False


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised on both sides."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_round_robin(
    fns: dict[str, Callable[[], Any]], reps: dict[str, int], device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call for each function, interleaved: round r calls every function still owed a
    repetition, so slow phases of a shared machine hit all methods alike. ``warmup`` untimed calls
    of each first; everything under ``torch.inference_mode``."""
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        synchronize(device)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(max(reps.values())):
            for name, fn in fns.items():
                if r < reps[name]:
                    times[name].append(time_once(fn, device))
    return times


def cpu_allocation_peak(prof: torch.profiler.profile) -> int:
    """Peak CPU memory of a ``torch.profiler.profile(profile_memory=True)`` run: the peak of the running
    sum of the c10 CPU allocator events (bytes; frees are negative). Resident memory and tracemalloc
    do not see torch's allocations this precisely."""
    from torch._C._profiler import _EventType

    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak
