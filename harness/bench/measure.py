"""Timing and memory measurement of one benchmark phase.

Timing follows the usual protocol of careful GPU/CPU benchmarks (e.g. ``torch.utils.benchmark``):
inputs are built before the clock starts, a warm-up run is discarded, the device is synchronised
(``torch.cuda.synchronize``) before reading the clock, and the median and spread (interquartile
range, min, max) of several repeats are reported.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (caching-allocator
  level), minus what was allocated before the run. Every such call, and every ``synchronize`` around
  a timed run, goes through the device's :class:`~harness.bench.device.DeviceOps`.
* CPU (Linux): the process's *peak resident memory* during the warm-up run, above its resident
  memory when the run started — ``VmHWM`` of ``/proc/self/status`` after resetting it by writing
  ``5`` to ``/proc/self/clear_refs``, in the measuring process itself (no fresh process per point:
  that would cost a torch import each). So that freed memory really leaves the process, glibc runs
  under the ``"return"`` policy of :func:`harness.util.timing.set_malloc_policy` (every allocation of
  64 KiB or more by ``mmap``, which also stops glibc raising that threshold) and free heap pages are
  returned (``malloc_trim``) before each measurement. This counts everything the run touches
  (tensors, oneDNN/OpenMP buffers, Python objects), not only tensors.
* CPU elsewhere: an allocator-level fallback — c10's CPU allocator events recorded by
  ``torch.profiler(profile_memory=True)``, peak of their running sum. (Not the default: the
  profiler itself needs gigabytes for workloads of ~10^5 operations, e.g. Mamba's reference scan.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from harness.bench import device as bench_device
from harness.bench.device import DeviceOps
from harness.util.timing import cpu_allocation_peak, libc, set_malloc_policy

CPU_RSS_METHOD = (
    "cpu: peak resident memory (VmHWM reset via /proc/self/clear_refs) above the RSS at the run's start, "
    "in-process, glibc mmap threshold 64 KiB + malloc_trim"
)
CPU_RSS_METHOD_UNTUNED = (
    "cpu: peak resident memory (VmHWM reset via /proc/self/clear_refs) above the RSS at the run's start, "
    "in-process, glibc defaults (memory glibc kept from earlier runs can hide part of a peak)"
)
CPU_PROFILER_METHOD = "cpu: c10 allocator alloc/free events via torch.profiler(profile_memory=True), peak live bytes"
CUDA_MEMORY_METHOD = "cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus allocated before"


class PointTimeout(Exception):
    """A run exceeded its hard deadline."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`PointTimeout` in this thread once ``seconds`` have passed (SIGALRM; Python checks
    for it between operations, so a long single kernel finishes first). No-op off the main thread or
    on platforms without ``SIGALRM``."""
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise PointTimeout(f"exceeded the hard deadline of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _vm_size() -> int | None:
    """This process's virtual memory size in bytes (Linux), else None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def address_space_limit(extra_bytes: int | None) -> Iterator[int | None]:
    """Cap this process's address space at its current size plus ``extra_bytes`` (``RLIMIT_AS``), so
    a run that would exhaust the machine's memory fails with an allocation error (recorded as an
    ``oom`` skip) instead of summoning the kernel's OOM killer. CPU only: CUDA reserves far more
    virtual memory than it uses. Yields the limit, or None where it cannot be set."""
    try:
        import resource
    except ImportError:
        yield None
        return
    vm = _vm_size()
    if extra_bytes is None or vm is None:
        yield None
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        yield None
        return
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_peak_supported() -> bool:
    """Whether the peak resident memory can be reset and read here (Linux with glibc)."""
    if not libc() or _status_bytes("VmHWM:") is None:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


_MALLOC_TUNED = False


def prepare_cpu_memory() -> bool:
    """Make freed memory leave the process (see the module docstring); True where RSS peaks work.
    Process-wide and permanent: only for a process that does nothing but measure (the CLI)."""
    global _MALLOC_TUNED
    if not rss_peak_supported():
        return False
    _MALLOC_TUNED = set_malloc_policy("return")
    return _MALLOC_TUNED


def as_ops(device: torch.device | DeviceOps) -> DeviceOps:
    """``device`` itself if it is a :class:`DeviceOps`, else :func:`harness.bench.device.device_ops` of it."""
    return device if isinstance(device, DeviceOps) else bench_device.device_ops(device)


def time_once(fn: Callable[[], object], device: torch.device | DeviceOps) -> float:
    """Seconds of one call of ``fn``, the device synchronised on both sides (as ``torch.utils.benchmark``;
    the same protocol as :func:`harness.util.timing.time_once`, through :class:`DeviceOps`)."""
    ops = as_ops(device)
    ops.synchronize()
    t0 = time.perf_counter()
    fn()
    ops.synchronize()
    return time.perf_counter() - t0


def _rss_peak_run(fn: Callable[[], object], ops: DeviceOps) -> tuple[float, int]:
    libc().malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _status_bytes("VmRSS:") or 0
    seconds = time_once(fn, ops)
    return seconds, max(0, (_status_bytes("VmHWM:") or 0) - base)


def run_with_memory(fn: Callable[[], object], device: torch.device | DeviceOps) -> tuple[float, int | None, int | None]:
    """One (warm-up) run of ``fn`` measuring its peak memory (see the module docstring).

    Returns ``(seconds, peak_bytes_above_start, peak_total_bytes)``; the total is known on CUDA only.
    """
    ops = as_ops(device)
    if ops.has_allocator_stats:
        ops.synchronize()
        ops.reset_peak_memory()
        before = ops.memory_allocated() or 0
        seconds = time_once(fn, ops)
        total = ops.max_memory_allocated() or 0
        return seconds, total - before, total
    if ops.kind == "cpu" and rss_peak_supported():
        seconds, peak = _rss_peak_run(fn, ops)
        return seconds, peak, None
    if ops.kind == "cpu":
        from torch.profiler import ProfilerActivity, profile

        os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # kineto prints two lines per profile otherwise
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            seconds = time_once(fn, ops)
        return seconds, cpu_allocation_peak(prof), None
    return time_once(fn, ops), None, None


def memory_method(device: torch.device | DeviceOps) -> str:
    """How :func:`run_with_memory` measures memory on ``device``."""
    ops = as_ops(device)
    if ops.has_allocator_stats:
        return CUDA_MEMORY_METHOD
    if ops.kind == "cpu":
        if not rss_peak_supported():
            return CPU_PROFILER_METHOD
        return CPU_RSS_METHOD if _MALLOC_TUNED else CPU_RSS_METHOD_UNTUNED
    return "not measured on this device"


@dataclass
class Timing:
    """Repeated timings of one phase."""

    times: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | None]:
        """Median, quartiles, min, max and count (quartiles need at least 2 repeats)."""
        t = sorted(self.times)
        n = len(t)
        if n == 0:
            return {"repeats": 0}
        q1 = q3 = None
        if n >= 2:
            q = statistics.quantiles(t, n=4, method="inclusive")
            q1, q3 = q[0], q[2]
        return {
            "repeats": n,
            "time_median_s": statistics.median(t),
            "time_p25_s": q1,
            "time_p75_s": q3,
            "time_iqr_s": None if q1 is None else q3 - q1,
            "time_min_s": t[0],
            "time_max_s": t[-1],
        }


def plan_repeats(first_s: float, budget_left_s: float, min_time_s: float, min_repeats: int, max_repeats: int) -> int:
    """How many timed repeats to run, given one run takes about ``first_s``: enough to fill
    ``min_time_s`` and at least ``min_repeats``, at most ``max_repeats``, and never more than the
    remaining budget allows (but always one)."""
    first_s = max(first_s, 1e-9)
    want = max(min_repeats, int(min_time_s / first_s + 0.999))
    afford = int(budget_left_s / first_s)
    return max(1, min(want, max_repeats, afford))
