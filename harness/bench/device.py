"""The device calls of the benchmark, in one place: synchronisation, peak-memory counters, cache
release and total memory.

Every CUDA-specific call the sweep makes (``torch.cuda.synchronize``, ``reset_peak_memory_stats``,
``memory_allocated``, ``max_memory_allocated``, ``empty_cache``, ``get_device_properties``) goes
through a :class:`DeviceOps` obtained from :func:`device_ops`, so that the CUDA path of the sweep can
be exercised on a machine without a GPU by substituting a recording stand-in (the tests do), and so
that another accelerator needs one more subclass, not edits across the sweep.

* :class:`DeviceOps` — CPU: nothing to synchronise, no allocator counters (peak memory is then read
  from the process's resident memory, :mod:`harness.bench.measure`).
* :class:`CudaOps` — CUDA through ``torch.cuda``, timing bracketed by ``synchronize`` as
  ``torch.utils.benchmark`` does.
"""

from __future__ import annotations

import torch


class DeviceUnavailableError(ValueError):
    """A device was asked for that this machine does not have (one clear line for the command line)."""


class DeviceOps:
    """Device calls of the sweep, CPU flavour (no-ops). ``device`` is where tensors are placed."""

    #: ``cpu`` or ``cuda``: which measurement path (memory counters, budgets) applies
    kind: str = "cpu"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def has_allocator_stats(self) -> bool:
        """Whether peak memory is read from the device allocator (:meth:`max_memory_allocated`)."""
        return False

    def synchronize(self) -> None:
        """Wait for queued kernels (no-op on CPU)."""

    def reset_peak_memory(self) -> None:
        """Restart the allocator's peak counter (no-op without allocator statistics)."""

    def memory_allocated(self) -> int | None:
        """Bytes allocated on the device now (None without allocator statistics)."""
        return None

    def max_memory_allocated(self) -> int | None:
        """Peak bytes allocated since :meth:`reset_peak_memory` (None without allocator statistics)."""
        return None

    def empty_cache(self) -> None:
        """Return cached, unused device memory (no-op on CPU)."""

    def total_memory(self) -> int | None:
        """The device's memory in bytes (None on CPU: the budget comes from ``/proc/meminfo``)."""
        return None


class CudaOps(DeviceOps):
    """Device calls on a CUDA device through ``torch.cuda``."""

    kind = "cuda"

    @property
    def has_allocator_stats(self) -> bool:
        return True

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def memory_allocated(self) -> int | None:
        return int(torch.cuda.memory_allocated(self.device))

    def max_memory_allocated(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device))

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def total_memory(self) -> int | None:
        return int(torch.cuda.get_device_properties(self.device).total_memory)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where available, else CPU; ``cuda`` without CUDA is a
    :class:`DeviceUnavailableError` saying so in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise DeviceUnavailableError(f"--device {name!r} is not a device torch knows ({err}).") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {name} was asked for but torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use --device cpu, or a CUDA build of torch on a GPU machine."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) (0..n-1)."
            )
    return dev


def device_ops(device: torch.device) -> DeviceOps:
    """The :class:`DeviceOps` of ``device`` (the sweep's one way to reach device-specific calls)."""
    if device.type == "cuda":
        return CudaOps(device)
    return DeviceOps(device)
