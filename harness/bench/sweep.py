"""The sweep: every (length, shape, method, phase) point, measured within its budget and stored.

Protocol per phase point (see :mod:`harness.bench.measure`):

1. *Prediction.* From the same method, shape and phase at shorter lengths in this results file, the
   time of one run (its fastest repeat) and its peak memory are extrapolated along the measured
   log-log slope (clamped per phase, :data:`SLOPES`). A point whose warm-up plus one timed run would exceed the
   per-point time budget, or whose memory would exceed the memory budget, is recorded as skipped
   (``skip_kind`` ``budget`` / ``memory``) without running.
2. *Warm-up.* One run, discarded from the timings; it measures peak memory.
3. *Repeats.* Enough timed runs to fill ``min_time_s`` (at least ``min_repeats``, at most
   ``max_repeats``), never more than the budget left allows, but always one; a run longer than
   ``long_run_s`` is timed once (its spread is then not reported: fewer repeats at long L).

Errors never stop the sweep: a length the method does not support (:class:`MixerConfigError`), a run
past its hard deadline, out-of-memory and any other exception are recorded as skipped points with
their reason. Points already in the results file with the same settings are not measured again.

Decoding starts from the cache of a real prefill of the prompt (``prompt_cache="prefill"``) or from a
cache of the same sizes grown from a short prefill (``"synthetic"``, :mod:`harness.bench.synthetic_cache`);
the mode is part of a decode row's key (:func:`harness.bench.store.row_key`), and every decode row
records how its cache was really built (``prompt_cache_built``: a cache that cannot be grown falls back
to a real prefill, with the reason in ``prompt_cache_note``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.bench import device as bench_device
from harness.bench import measure, reference, roofline
from harness.bench.device import resolve_device
from harness.bench.shapes import Shape
from harness.bench.store import ResultStore, row_key
from harness.bench.synthetic_cache import PROMPT_CACHE_MODES
from harness.bench.workloads import (
    PHASES,
    Workload,
    build_model,
    cache_bytes,
    cache_numel,
    declared_state_size,
    default_forms,
    param_count,
    weights_bytes,
)
from harness.core.architecture import UnsupportedMethodError
from harness.core.mixer import MixerConfigError
from harness.core.registry import get_method
from harness.util.io import atomic_write_json
from harness.util.provenance import device_name, environment, utc_now

BENCH_VERSION = 2
#: skip kinds that a later run retries automatically when its budget is larger
BUDGET_KINDS = ("budget", "memory")
#: skip kinds assumed to hold at every longer length too (cost grows with L)
MONOTONE_KINDS = ("oom", "timeout", "memory")
#: skip kinds retried only with ``retry_skipped``
RETRY_KINDS = ("timeout", "oom", "error", "unsupported", "kind")


@dataclass
class SweepSettings:
    """What to measure and how (the defaults fit the CPU sweep of the README in ~10 minutes)."""

    methods: list[str]
    shapes: list[Shape]
    lengths: list[int]
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    decode_tokens: int = 128
    threads: int | None = None
    max_seq_len: str | int = "fit"  # "fit": L + decode_tokens; "native": the shape's; or a number
    budget_s: float = 15.0
    mem_budget_bytes: int | None = None
    min_time_s: float = 0.5
    min_repeats: int = 2
    max_repeats: int = 5
    long_run_s: float = 1.0
    train_max_len: int | None = 4096
    decode_max_len: int | None = None
    total_budget_s: float | None = None
    retry_skipped: bool = False
    prompt_cache: str = "prefill"  # how decoding's starting cache is built (PROMPT_CACHE_MODES)

    def __post_init__(self) -> None:
        if self.prompt_cache not in PROMPT_CACHE_MODES:
            raise ValueError(f"prompt_cache must be one of {list(PROMPT_CACHE_MODES)}, not {self.prompt_cache!r}")

    def settings_key(self, shape: Shape, device: torch.device) -> str:
        """Hash of everything a measurement depends on besides method, length and phase (and a decode
        point's prompt-cache mode, a key field of its own: :func:`harness.bench.store.row_key`)."""
        blob = {
            "v": BENCH_VERSION,
            "device": device_name(device),
            "dtype": self.dtype,
            "batch": self.batch,
            "decode_tokens": self.decode_tokens,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "max_seq_len": self.max_seq_len,
            "shape": shape.key(),
        }
        return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def max_len_for(settings: SweepSettings, shape: Shape, seq_len: int) -> int:
    """``max_position_embeddings`` the model is built with at this point."""
    if settings.max_seq_len == "fit":
        return seq_len + settings.decode_tokens
    if settings.max_seq_len == "native":
        return shape.native_max_len
    return int(settings.max_seq_len)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def classify(err: BaseException) -> str:
    """The ``skip_kind`` of a failed point."""
    if isinstance(err, MixerConfigError):
        return "unsupported"
    if isinstance(err, UnsupportedMethodError):
        return "kind"
    if isinstance(err, measure.PointTimeout):
        return "timeout"
    if _is_oom(err):
        return "oom"
    return "error"


#: (lowest, highest, assumed-with-one-point) log-log slope of one run's time and peak memory against L.
#: Prefill and training cost grows at least linearly and at most ~quadratically; decoding n tokens after
#: an L-token prompt costs O(1) (recurrent state) to O(L) (KV cache) in L.
SLOPES: dict[str, dict[str, tuple[float, float, float]]] = {
    "prefill": {"time": (1.0, 2.2, 1.5), "mem": (1.0, 2.0, 1.5)},
    "train": {"time": (1.0, 2.2, 1.5), "mem": (1.0, 2.0, 1.5)},
    "decode": {"time": (0.0, 1.2, 1.0), "mem": (0.0, 1.2, 1.0)},
}


class Predictor:
    """Extrapolates one run's time and peak memory from shorter lengths along the log-log slope
    measured between the two longest of them (clamped to :data:`SLOPES`); the smaller of that and the
    steepest allowed extrapolation from the second-longest, so that one slow outlier does not skip
    every longer length."""

    def __init__(self) -> None:
        self.history: dict[tuple, list[tuple[int, float, float | None]]] = {}

    def add(self, key: tuple, seq_len: int, seconds: float | None, mem: float | None) -> None:
        if seconds is not None:
            self.history.setdefault(key, []).append((seq_len, seconds, mem))

    @staticmethod
    def _extrapolate(points: list[tuple[int, float]], seq_len: int, bounds: tuple[float, float, float]) -> float | None:
        lo, hi, one = bounds
        pts = sorted(p for p in points if p[0] < seq_len and p[1] and p[1] > 0)
        if not pts:
            return None
        (l1, v1) = pts[-1]
        if len(pts) == 1:
            return v1 * (seq_len / l1) ** one
        (l0, v0) = pts[-2]
        slope = min(max(math.log(v1 / v0) / math.log(l1 / l0), lo), hi)
        # a slow outlier at the last length must not condemn every longer one: also extrapolate from the
        # length before it at the steepest allowed slope, and take the smaller
        return min(v1 * (seq_len / l1) ** slope, v0 * (seq_len / l0) ** hi)

    def predict(self, key: tuple, seq_len: int) -> tuple[float | None, float | None]:
        """(seconds of one run, peak bytes) at ``seq_len``; None without shorter measurements.
        ``key`` is (shape, method, phase)."""
        hist = self.history.get(key, [])
        bounds = SLOPES.get(key[-1], SLOPES["prefill"])
        t = self._extrapolate([(L, s) for L, s, _ in hist], seq_len, bounds["time"])
        m = self._extrapolate([(L, mm) for L, _, mm in hist if mm is not None], seq_len, bounds["mem"])
        return t, m


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@dataclass
class SweepReport:
    """What a sweep did: counts and the points it did not get to."""

    measured: int = 0
    skipped: int = 0
    reused: int = 0
    not_run: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


class Sweep:
    """Runs :class:`SweepSettings` into a :class:`ResultStore`."""

    def __init__(
        self,
        settings: SweepSettings,
        store: ResultStore,
        log: Callable[[str], None] = print,
        run_id: str | None = None,
        heartbeat: Path | None = None,
        tune_malloc: bool = False,
        peaks: roofline.Peaks | None = None,
    ) -> None:
        self.s = settings
        self.store = store
        self.log = log
        self.heartbeat = heartbeat
        #: (shape, method, phase) -> (shortest length, kind) that ran out of memory or time
        self.failed: dict[tuple, tuple[int, str]] = {}
        #: every device-specific call (synchronise, memory counters, cache release) goes through this
        self.ops = bench_device.device_ops(resolve_device(settings.device))
        self.device = self.ops.device
        self.dtype = getattr(torch, settings.dtype)
        #: device peaks of the roofline columns: given, or measured before the first point measured
        self.peaks = peaks
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if tune_malloc:  # a process that only measures (the CLI): tune glibc, and let gc skip the imports
            if self.ops.kind == "cpu":
                measure.prepare_cpu_memory()
            gc.collect()
            gc.freeze()  # the ~10^6 objects of torch/transformers are never garbage: 0.2 s -> ms per collect
        self.meta = {**environment(self.device, self.dtype), "argv": " ".join(sys.argv[1:])}
        self.run_id = run_id or utc_now()
        self.predictor = Predictor()
        #: (shape, method) whose cache could not be grown: their decode points pay a real prefill
        self.fell_back: set[tuple[str, str]] = set()
        self.report = SweepReport()
        self._t0 = time.perf_counter()

    # -- bookkeeping -------------------------------------------------------------------------
    def _base_row(self, shape: Shape, method: str, seq_len: int, phase: str) -> dict[str, Any]:
        return {
            **self.meta,  # first: the point's own date below replaces the sweep's
            "bench_version": BENCH_VERSION,
            "settings_key": self.s.settings_key(shape, self.device),
            "run_id": self.run_id,
            "date": utc_now(),
            "method": method,
            "method_kind": reference.KIND if reference.is_reference(method) else get_method(method).kind,
            "shape": shape.name,
            "shape_kind": shape.kind,
            "seq_len": seq_len,
            "phase": phase,
            "prompt_cache": self.s.prompt_cache if phase == "decode" else None,
            "batch": self.s.batch,
            "decode_tokens": self.s.decode_tokens,
            "max_seq_len": max_len_for(self.s, shape, seq_len),
            "max_seq_len_policy": self.s.max_seq_len,
            "budget_s": self.s.budget_s,
            "min_time_s": self.s.min_time_s,
            "min_repeats": self.s.min_repeats,
            "max_repeats": self.s.max_repeats,
            "long_run_s": self.s.long_run_s,
            "mem_budget_bytes": self.s.mem_budget_bytes,
            "mem_method": measure.memory_method(self.ops),
        }

    def _wants(self, row: dict[str, Any] | None) -> bool:
        """Whether a point must be (re)measured given its stored row."""
        if row is None:
            return True
        if row["status"] == "ok":
            return False
        kind = row.get("skip_kind")
        if kind in BUDGET_KINDS:
            if kind == "budget":
                return self.s.budget_s > (row.get("budget_s") or 0)
            old, new = row.get("mem_budget_bytes"), self.s.mem_budget_bytes
            return new is None or (old is not None and new > old)
        return self.s.retry_skipped

    def _feed(self, row: dict[str, Any]) -> None:
        key = (row["shape"], row["method"], row["phase"])
        if row["status"] != "ok" and row.get("skip_kind") in MONOTONE_KINDS:
            if key not in self.failed or row["seq_len"] < self.failed[key][0]:
                self.failed[key] = (row["seq_len"], row["skip_kind"])
        if row["status"] == "ok":
            one = row.get("time_min_s") or row.get("time_median_s")  # the least noisy estimate of one run
            self.predictor.add(
                (row["shape"], row["method"], row["phase"]), row["seq_len"], one, row.get("mem_peak_bytes")
            )

    def _skip(self, row: dict[str, Any], kind: str, reason: str) -> dict[str, Any]:
        row.update(status="skipped", skip_kind=kind, skip_reason=reason)
        self.report.skipped += 1
        self.log(f"  skip {row['phase']:<7} [{kind}] {reason}")
        return row

    def _over_total(self) -> bool:
        return self.s.total_budget_s is not None and time.perf_counter() - self._t0 > self.s.total_budget_s

    def _applicable(self, phase: str, seq_len: int) -> bool:
        cap = {"train": self.s.train_max_len, "decode": self.s.decode_max_len}.get(phase)
        return cap is None or seq_len <= cap

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> SweepReport:
        """Measure every point (lengths outermost, so short lengths finish first for all methods)."""
        total = len(self.s.lengths) * len(self.s.shapes) * len(self.s.methods)
        i = 0
        guard = self.s.mem_budget_bytes + 2**30 if self.ops.kind == "cpu" and self.s.mem_budget_bytes else None
        with measure.address_space_limit(guard):
            for seq_len in sorted(self.s.lengths):
                for shape in self.s.shapes:
                    for method in self.s.methods:
                        i += 1
                        self._point(shape, method, seq_len, f"[{i}/{total}]")
        self.report.elapsed_s = time.perf_counter() - self._t0
        return self.report

    def _point(self, shape: Shape, method: str, seq_len: int, tag: str) -> None:
        todo = []
        for phase in self.s.phases:
            if not self._applicable(phase, seq_len):
                continue
            base = self._base_row(shape, method, seq_len, phase)
            stored = self.store.get(row_key(base))
            if stored is not None:
                self._feed(stored)
            if self._wants(stored):
                todo.append(base)
            else:
                self.report.reused += 1
        if not todo:
            return
        if self._over_total():
            self.report.not_run += [f"{shape.name}/{method}/L={seq_len}/{r['phase']}" for r in todo]
            return
        self.log(f"{tag} {shape.name} {method} L={seq_len} batch {self.s.batch}")
        if self.peaks is None:
            self.peaks = roofline.measure_peaks(self.ops, self.dtype)
            self.log(
                f"  device peaks for the roofline: {self.peaks.flops / 1e9:,.1f} GFLOP/s, "
                f"{self.peaks.bandwidth / 1e9:,.1f} GB/s ({self.peaks.source})"
            )
        model = workload = None
        try:
            model = build_model(shape, method, max_len_for(self.s, shape, seq_len), self.device, self.dtype)
            workload = Workload(
                model,
                shape,
                method,
                seq_len,
                self.s.batch,
                self.s.decode_tokens,
                self.device,
                self.dtype,
                prompt_cache=self.s.prompt_cache,
            )
        except Exception as err:  # a method that cannot be built for this shape/length
            for row in todo:
                self.store.put(self._skip(row, classify(err), f"cannot build: {type(err).__name__}: {err}"))
            self._cleanup()
            return
        static = {
            "params": param_count(model),
            "weights_bytes": weights_bytes(model),
            "input_bytes": workload.input_bytes(),
            "peak_flops": self.peaks.flops,
            "peak_bandwidth": self.peaks.bandwidth,
            "peak_source": self.peaks.source,
        }
        for row in todo:
            row.update(static)
            if self._over_total():
                self.report.not_run.append(f"{shape.name}/{method}/L={seq_len}/{row['phase']}")
                continue
            row = self._phase(workload, row)
            self.store.put(row)
            self._feed(row)
        del workload, model
        self._cleanup()

    def _beat(self, row: dict[str, Any] | None, hard_s: float) -> None:
        """Tell a supervising process (:mod:`harness.bench.supervise`) which point runs and until when."""
        if self.heartbeat is None:
            return
        if row is None:
            self.heartbeat.unlink(missing_ok=True)
            return
        atomic_write_json(self.heartbeat, {"row": row, "deadline": time.time() + hard_s, "hard_s": hard_s})

    def _cleanup(self) -> None:
        gc.collect()
        self.ops.empty_cache()

    def _phase(self, w: Workload, row: dict[str, Any]) -> dict[str, Any]:
        phase, seq_len = row["phase"], row["seq_len"]
        key = (row["shape"], row["method"], phase)
        pred_t, pred_mem = self.predictor.predict(key, seq_len)
        extra = 0.0
        real_prompt = self.s.prompt_cache == "prefill" or (row["shape"], row["method"]) in self.fell_back
        if phase == "decode" and real_prompt and w.prompt_cache is None:  # the prompt is prefilled first (untimed)
            extra = self.predictor.predict((row["shape"], row["method"], "prefill"), seq_len)[0] or 0.0
        row["predicted_time_s"] = pred_t
        row["predicted_mem_bytes"] = pred_mem
        row["form"] = default_forms(row["method"])[0 if phase != "decode" else 1]
        failed = self.failed.get(key)
        if failed is not None and failed[0] < seq_len:
            return self._skip(row, failed[1], f"not tried: already {failed[1]} at the shorter L={failed[0]:,}")
        if pred_t is not None and 2 * pred_t + extra > self.s.budget_s:
            return self._skip(
                row,
                "budget",
                f"predicted {2 * pred_t + extra:.1f} s for warm-up + one run > budget {self.s.budget_s:g} s",
            )
        if pred_mem is not None and self.s.mem_budget_bytes is not None and pred_mem > self.s.mem_budget_bytes:
            return self._skip(
                row, "memory", f"predicted peak {_fmt_bytes(pred_mem)} > budget {_fmt_bytes(self.s.mem_budget_bytes)}"
            )
        hard = max(2 * self.s.budget_s, 10.0)
        self._beat(row, hard)
        try:
            with measure.deadline(hard):
                self._measure(w, row, extra)
        except Exception as err:  # never fatal: record why
            kind = classify(err)
            detail = "" if kind in ("unsupported", "timeout", "oom") else " | " + _last_frame(err)
            if kind == "oom":
                self._cleanup()
            return self._skip(row, kind, f"{type(err).__name__}: {str(err)[:300]}{detail}")
        finally:
            self._beat(None, 0)
            if phase == "train":
                w.finish_train()
        self.report.measured += 1
        self.log(
            f"  {phase:<7} {row['time_median_s'] * 1e3:9.1f} ms  {row['tokens_per_s']:10.1f} tok/s  "
            f"x{row['repeats']}  mem {_fmt_bytes(row.get('mem_peak_bytes'))}"
            + (f"  cache {row['cache_numel']:,}/seq" if row.get("cache_numel") is not None else "")
            + (f"  [{row.get('prompt_cache_built')} prompt cache]" if phase == "decode" else "")
        )
        if row.get("prompt_cache_note"):
            self.log(f"  note: {row['prompt_cache_note']}")
        return row

    def _measure(self, w: Workload, row: dict[str, Any], extra: float) -> None:
        phase = w.phase(row["phase"])  # for decode this builds the prompt's cache if needed
        if row["phase"] == "decode" and w.prompt_info is not None:
            info = w.prompt_info
            row.update(
                prompt_cache_built=info.built,
                prompt_prefilled_tokens=info.prefilled_tokens,
                prompt_cache_note=info.note,
            )
            if info.note:
                self.fell_back.add((row["shape"], row["method"]))
        t_start = time.perf_counter()
        phase.reset()
        warm_s, mem, mem_total = measure.run_with_memory(phase.run, self.ops)
        row.update(warmup_runs=1, warmup_time_s=warm_s, mem_peak_bytes=mem, mem_peak_total_bytes=mem_total)
        phase.reset()
        first = measure.time_once(phase.run, self.ops)
        timing = measure.Timing([first])
        spent = time.perf_counter() - t_start
        n = measure.plan_repeats(
            first,
            self.s.budget_s - spent,
            self.s.min_time_s,
            self.s.min_repeats if first < self.s.long_run_s else 1,
            self.s.max_repeats,
        )
        for _ in range(n - 1):
            if time.perf_counter() - t_start > self.s.budget_s:  # the machine slowed down: stop in budget
                break
            phase.reset()
            timing.times.append(measure.time_once(phase.run, self.ops))
        row.update(timing.summary())
        row["wall_s"] = time.perf_counter() - t_start  # warm-up, repeats and resets: what the point cost
        row["tokens"] = phase.tokens
        row["tokens_per_s"] = self.s.batch * phase.tokens / row["time_median_s"]
        row["status"] = "ok"
        row["skip_kind"] = row["skip_reason"] = None
        if row["phase"] in ("prefill", "decode"):
            end = row["seq_len"] + (self.s.decode_tokens if row["phase"] == "decode" else 0)
            cache = w.decoded_cache() if row["phase"] == "decode" else w.prompt_cache
            row["cache_numel"] = cache_numel(cache, self.s.batch)
            row["cache_bytes"] = cache_bytes(cache, self.s.batch)
            row["state_size_declared"] = declared_state_size(w.model, end, row["method"])
            row["cache_len"] = end


def _last_frame(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    return f"at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""


def settings_dict(settings: SweepSettings) -> dict[str, Any]:
    """The settings as plain data (for the summary)."""
    d = asdict(settings)
    d["shapes"] = [s.name for s in settings.shapes]
    return d
