"""``python -m harness bench``: sweep throughput and memory against sequence length.

See ``harness/bench/README.md`` for the protocol, the outputs and how to run it on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness.bench import device as bench_device
from harness.bench import reference, summary
from harness.bench.device import resolve_device
from harness.bench.plot import plot_shapes
from harness.bench.roofline import Peaks, peaks_from_rows, roofline_table
from harness.bench.shapes import SHAPES, UnknownShapeError, get_shape
from harness.bench.store import ResultsFileError, ResultStore, prompt_cache_of
from harness.bench.supervise import is_command_line, supervise
from harness.bench.sweep import Sweep, SweepSettings
from harness.bench.synthetic_cache import PROBE_TOKENS, PROMPT_CACHE_MODES
from harness.bench.workloads import PHASES
from harness.report.bench_analysis import analyse
from harness.util.io import atomic_write_json, atomic_write_text
from harness.util.provenance import utc_now

DEFAULT_SHAPES = "tiny,pythia-410m"
DTYPES = ("float32", "bfloat16", "float16", "float64")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _lengths(text: str) -> list[int]:
    out = []
    for t in _csv(text):
        out.append(_positive_int(t))
    if not out:
        raise argparse.ArgumentTypeError("--lengths needs at least one length, e.g. 512,1024,2048")
    return sorted(set(out))


def _batch_sizes(text: str) -> list[int]:
    out = [_positive_int(t) for t in _csv(text)]
    if not out:
        raise argparse.ArgumentTypeError("--batch-sizes needs at least one batch size, e.g. 1,8")
    return sorted(set(out))


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _cap(text: str) -> int | None:
    return None if text.lower() in ("none", "all", "0") else _positive_int(text)


def _max_seq_len(text: str) -> str | int:
    if text in ("fit", "native"):
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"--max-seq-len takes fit, native or a positive integer, not {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Throughput (prefill, decoding, training step) and peak memory of every registered method against "
        "sequence length, at layer-level shapes of Pythia/LLaMA2 and whole tiny models."
    )
    g = parser.add_argument_group("what to measure")
    g.add_argument(
        "--methods",
        default="all",
        help=f"comma-separated method names, or 'all' registered (default) plus {reference.NAME!r}, the "
        "transformers reference (transformers' own GPT-NeoX/LLaMA model, SDPA attention, DynamicCache)",
    )
    g.add_argument(
        "--shapes",
        default=DEFAULT_SHAPES,
        help=f"comma-separated shapes (default {DEFAULT_SHAPES}); known: {', '.join(SHAPES)}",
    )
    g.add_argument("--lengths", type=_lengths, default=None, help="explicit lengths, e.g. 512,2048,8192")
    g.add_argument("--min-len", type=_positive_int, default=512, help="shortest length (powers of 2 from it)")
    g.add_argument("--max-len", type=_positive_int, default=16384, help="longest length (default 16384)")
    g.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of prefill,decode,train")
    g.add_argument("--decode-tokens", type=_positive_int, default=128, help="tokens decoded after the prompt")
    g.add_argument(
        "--prompt-cache",
        choices=PROMPT_CACHE_MODES,
        default="prefill",
        help="the cache decoding starts from: 'prefill' (default: a real prefill of the L-token prompt) or "
        f"'synthetic' (the same sizes and positions, grown from a real prefill of {PROBE_TOKENS} tokens, without the "
        "O(L) prefill; a cache that cannot be grown falls back to a real prefill, recorded in the row). Decoding "
        "cost depends on the cache's sizes only; prefill and training rows are unaffected",
    )
    g.add_argument("--batch", type=_positive_int, default=1, help="sequences per batch (default 1)")
    g.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=None,
        help="comma-separated batch sizes, each swept in turn into the same results file, e.g. 1,8 (overrides --batch)",
    )
    g.add_argument(
        "--max-seq-len",
        type=_max_seq_len,
        default="fit",
        help="max_position_embeddings of the models: 'fit' (L + decode tokens, default), 'native' "
        "(the source model's, e.g. 2048 for Pythia: fixed-length methods are skipped past it) or N",
    )
    g = parser.add_argument_group("where")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter/activation dtype")
    g.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: torch's current setting); fixed and recorded",
    )
    g.add_argument(
        "--peak-tflops",
        type=_positive_float,
        default=None,
        help="device peak TFLOP/s for the roofline columns (default: measured, a large matmul in --dtype)",
    )
    g.add_argument(
        "--peak-bandwidth-gbs",
        type=_positive_float,
        default=None,
        help="device memory bandwidth GB/s for the roofline columns (default: measured, a large matrix-vector product)",
    )
    g = parser.add_argument_group("protocol and budgets")
    g.add_argument(
        "--budget-s",
        type=float,
        default=15.0,
        help="time budget per phase point: skipped when the predicted warm-up + one run exceeds it; "
        "repeats are planned within it (default 15)",
    )
    g.add_argument(
        "--mem-budget-gb",
        type=float,
        default=None,
        help="skip points predicted to need more (default: half the available RAM on CPU, 90%% of "
        "the GPU's memory on CUDA)",
    )
    g.add_argument("--min-time-s", type=float, default=0.5, help="timed repeats fill at least this long")
    g.add_argument("--min-repeats", type=_positive_int, default=2, help="timed repeats at least (when in budget)")
    g.add_argument("--max-repeats", type=_positive_int, default=5, help="timed repeats at most")
    g.add_argument(
        "--long-run-s",
        type=float,
        default=1.0,
        help="a run longer than this is timed once after the warm-up (fewer repeats at long L; default 1)",
    )
    g.add_argument(
        "--train-max-len",
        type=_cap,
        default=4096,
        help="measure the training step up to this length (default 4096; 'none' for all)",
    )
    g.add_argument("--decode-max-len", type=_cap, default=None, help="measure decoding up to this length")
    g.add_argument(
        "--total-budget-s",
        type=float,
        default=None,
        help="stop starting new points after this many seconds (re-run to continue)",
    )
    g = parser.add_argument_group("output")
    g.add_argument("--profile", default="tiny", help="results go to results/<profile>/bench/ (default tiny)")
    g.add_argument("--out", type=Path, default=None, help="output directory (overrides --profile)")
    g.add_argument("--name", default=None, help="file stem (default <device>-<dtype>, e.g. cpu-float32)")
    g.add_argument(
        "--fresh",
        action="store_true",
        help="start a new results file; an existing one is kept as <name>.json.bak-<time>",
    )
    g.add_argument(
        "--retry-skipped",
        action="store_true",
        help="re-measure points stored as skipped for timeout, OOM, error or unsupported",
    )
    g.add_argument("--no-plot", action="store_true", help="write the JSON and summary but no plots")
    g.add_argument("--report-only", action="store_true", help="only rewrite the summary and plots from the JSON")
    g.add_argument(
        "--no-supervise",
        action="store_true",
        help="measure in this process (default on the command line: a supervised child process that is "
        "restarted past a point stuck beyond its hard deadline or crashed, see harness/bench/supervise.py)",
    )
    g.add_argument("--worker-heartbeat", type=Path, default=None, help=argparse.SUPPRESS)
    g.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    g.add_argument("--list-shapes", action="store_true", help="list the shapes and exit")


def _select_methods(spec: str, err: Any) -> list[str]:
    from harness.core.registry import list_methods

    registered = list_methods()
    if spec.strip().lower() == "all":
        return [*registered, reference.NAME]
    chosen = []
    for name in _csv(spec):
        if name in registered or reference.is_reference(name):
            chosen.append(name)
        else:
            err(
                f"unknown method {name!r} skipped; registered methods: {', '.join(registered)} "
                f"(and {reference.NAME}, the transformers reference)"
            )
    return chosen


def _select_shapes(spec: str, err: Any) -> list:
    chosen = []
    for name in _csv(spec):
        try:
            chosen.append(get_shape(name))
        except UnknownShapeError as e:
            err(f"{e} (skipped)")
    return chosen


def main(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    try:
        return _main(args)
    finally:  # called in-process (tests, the experiment pipeline): leave torch's thread count as found
        torch.set_num_threads(threads)


class _Stop(Exception):
    """Stop the command with exit status ``code``, after printing ``message`` (if any) to stderr."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _err(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _main(args: argparse.Namespace) -> int:
    """List the shapes; or hand the sweep to a supervised child; or measure (unless ``--report-only``)
    and write the summary, the analysis and the plots."""
    if args.list_shapes:
        for s in SHAPES.values():
            print(f"{s.name:<18} {s.kind:<6} {s.source}")
        return 0
    supervised = not args.report_only and args.worker_heartbeat is None and not args.no_supervise and is_command_line()
    if supervised:  # the child validates, reports and measures; this process only watches it
        try:
            out_dir, stem, json_path = _paths(args, resolve_device(args.device).type)
        except (ValueError, RuntimeError):
            pass  # reported below, by the settings' validation
        else:
            _fresh(args, json_path)
            beat = out_dir / f".{stem}.heartbeat.json"
            child = [a for a in sys.argv[1:] if a != "--fresh"]
            return supervise(child + ["--worker-heartbeat", str(beat), "--run-id", utc_now()], beat, json_path)
    try:
        settings, device, batch_sizes, given_peaks = _settings(args)
        out_dir, stem, json_path = _paths(args, device.type)
        _fresh(args, json_path)
        try:
            store = ResultStore(json_path)
        except ResultsFileError as e:
            raise _Stop(2, str(e)) from None
        notes = [] if args.report_only else _measure(args, settings, batch_sizes, store, json_path, given_peaks)
        notes += _capped_phase_notes(settings)
        rows = _report_rows(args, settings, device, batch_sizes, store, json_path)
        _write_outputs(args, rows, notes, given_peaks, out_dir, stem, json_path)
    except _Stop as stop:
        if stop.message:
            _err(stop.message)
        return stop.code
    return 0


def _settings(args: argparse.Namespace) -> tuple[SweepSettings, torch.device, list[int], Peaks | None]:
    """The sweep's settings from the command line (with the device, the batch sizes and any given
    roofline peaks); an unusable option stops the command with status 2."""
    try:
        methods = _select_methods(args.methods, _err)
    except Exception as e:  # a method package that fails to import
        raise _Stop(2, f"cannot load the registered methods: {type(e).__name__}: {e}") from None
    shapes = _select_shapes(args.shapes, _err)
    phases = [p for p in _csv(args.phases) if p in PHASES]
    bad_phases = [p for p in _csv(args.phases) if p not in PHASES]
    if bad_phases:
        _err(f"unknown phase(s) {bad_phases} skipped; choose from {list(PHASES)}")
    if not methods or not shapes or not phases:
        raise _Stop(
            2,
            "nothing to measure: need at least one registered method, one known shape and one phase "
            "(see --methods, --shapes, --phases; `python -m harness methods` lists methods, --list-shapes shapes)",
        )
    try:
        given_peaks = _given_peaks(args)
    except ValueError as e:
        raise _Stop(2, str(e)) from None
    lengths = args.lengths if args.lengths is not None else _doubling_lengths(args.min_len, args.max_len)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise _Stop(2, str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    mem_budget = None if args.mem_budget_gb is None else int(args.mem_budget_gb * 2**30)
    if mem_budget is None:
        mem_budget = _default_mem_budget(device)
    batch_sizes = args.batch_sizes or [args.batch]
    settings = SweepSettings(
        methods=methods,
        shapes=shapes,
        lengths=lengths,
        phases=phases,
        device=str(device),
        dtype=args.dtype,
        batch=batch_sizes[0],
        decode_tokens=args.decode_tokens,
        threads=torch.get_num_threads(),
        max_seq_len=args.max_seq_len,
        budget_s=args.budget_s,
        mem_budget_bytes=mem_budget,
        min_time_s=args.min_time_s,
        min_repeats=args.min_repeats,
        max_repeats=max(args.max_repeats, 1),
        long_run_s=args.long_run_s,
        train_max_len=args.train_max_len,
        decode_max_len=args.decode_max_len,
        total_budget_s=args.total_budget_s,
        retry_skipped=args.retry_skipped,
        prompt_cache=args.prompt_cache,
    )
    return settings, device, batch_sizes, given_peaks


def _doubling_lengths(min_len: int, max_len: int) -> list[int]:
    """``--min-len``, doubled while it stays within ``--max-len``."""
    if min_len > max_len:
        raise _Stop(2, f"--min-len {min_len} > --max-len {max_len}")
    lengths, length = [], min_len
    while length <= max_len:
        lengths.append(length)
        length *= 2
    return lengths


def _measure(
    args: argparse.Namespace,
    settings: SweepSettings,
    batch_sizes: list[int],
    store: ResultStore,
    json_path: Path,
    peaks: Peaks | None,
) -> list[str]:
    """Run the sweep once per batch size into ``store`` (the device's peaks measured once, for all of
    them); the notes for the summary (points left for lack of ``--total-budget-s``)."""
    t0 = time.perf_counter()
    not_run: list[str] = []
    for batch in batch_sizes:
        left = None if args.total_budget_s is None else args.total_budget_s - (time.perf_counter() - t0)
        sweep = Sweep(
            dataclasses.replace(settings, batch=batch, total_budget_s=left),
            store,
            log=lambda m: print(m, flush=True),
            run_id=args.run_id,
            heartbeat=args.worker_heartbeat,
            tune_malloc=args.worker_heartbeat is not None or is_command_line(),
            peaks=peaks,
        )
        print(
            f"bench: {len(settings.methods)} method(s) x {len(settings.shapes)} shape(s) x {len(settings.lengths)} "
            f"length(s), batch {batch}, on {sweep.meta['device_name']}, {args.dtype}, {torch.get_num_threads()} "
            "thread(s)"
            + (", synthetic prompt caches for decoding" if args.prompt_cache == "synthetic" else "")
            + f" -> {json_path}",
            flush=True,
        )
        try:
            rep = sweep.run()
        except KeyboardInterrupt:
            raise _Stop(
                130, f"interrupted; {json_path} holds every finished point, re-run the same command to continue"
            ) from None
        peaks = sweep.peaks  # measured once, for every batch size
        not_run += rep.not_run
        print(
            f"bench: batch {batch}: measured {rep.measured}, skipped {rep.skipped}, reused {rep.reused} phase "
            f"points in {rep.elapsed_s:.0f} s",
            flush=True,
        )
    if not not_run:
        return []
    msg = (
        f"{len(not_run)} phase points not run: --total-budget-s {args.total_budget_s:g} reached; "
        "re-run the same command to continue"
    )
    _err(msg)
    return [msg]


def _capped_phase_notes(settings: SweepSettings) -> list[str]:
    """The summary's notes on phases measured only up to a cap (``--train-max-len``, ``--decode-max-len``)."""
    notes = []
    longest = max(settings.lengths)
    if settings.train_max_len is not None and "train" in settings.phases and longest > settings.train_max_len:
        notes.append(f"training step measured up to L = {settings.train_max_len:,} (--train-max-len).")
    if settings.decode_max_len is not None and "decode" in settings.phases and longest > settings.decode_max_len:
        notes.append(f"decoding measured up to L = {settings.decode_max_len:,} (--decode-max-len).")
    return notes


def _report_rows(
    args: argparse.Namespace,
    settings: SweepSettings,
    device: torch.device,
    batch_sizes: list[int],
    store: ResultStore,
    json_path: Path,
) -> list[dict[str, Any]]:
    """The stored rows the summary reports: those of these settings (every shape, every batch size, this
    prompt-cache mode); with ``--report-only`` and none of them, the newest run's."""
    keys = {
        (name, dataclasses.replace(settings, batch=b).settings_key(shape, device))
        for name, shape in SHAPES.items()
        for b in batch_sizes
    }
    rows = [
        r for r in _with_prompt_cache(store.all_rows(), args.prompt_cache) if (r["shape"], r["settings_key"]) in keys
    ]
    if not rows and args.report_only and store.all_rows():  # e.g. --threads differs: report the newest run's
        newest = max(r["run_id"] for r in store.all_rows())
        wanted = {r["settings_key"] for r in store.all_rows() if r["run_id"] == newest}
        modes = {prompt_cache_of(r) for r in store.all_rows() if r["run_id"] == newest} - {None}
        mode = args.prompt_cache if args.prompt_cache in modes or not modes else sorted(modes)[0]
        rows = [r for r in _with_prompt_cache(store.all_rows(), mode) if r["settings_key"] in wanted]
        print(f"bench: no rows with the current settings; reporting the settings of run {newest}", flush=True)
    if not rows:
        raise _Stop(1, f"no rows with these settings in {json_path}")
    return rows


def _write_outputs(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    notes: list[str],
    given_peaks: Peaks | None,
    out_dir: Path,
    stem: str,
    json_path: Path,
) -> None:
    """Write the summary (``<stem>.md``), the analysis with its roofline (``<stem>-summary.json``) and the
    plots, the measurement protocol first among the summary's notes."""
    p = rows[0]
    protocol = [f"peak memory: {p['mem_method']}."]
    if "min_time_s" in p:
        protocol.append(
            f"protocol: one warm-up run per point (it measures the peak memory), then timed repeats filling "
            f"{p['min_time_s']:g} s (at least {p['min_repeats']}, at most {p['max_repeats']}); a run longer than "
            f"{p['long_run_s']:g} s is timed once; budget {p['budget_s']:g} s per point; {p['threads']} torch "
            "thread(s).",
        )
    peaks = given_peaks or peaks_from_rows(rows)
    atomic_write_text(out_dir / f"{stem}.md", summary.render(rows, protocol + notes, peaks=peaks))
    atomic_write_json(out_dir / f"{stem}-summary.json", {**analyse(rows), "roofline": roofline_table(rows, peaks)})
    title = f"{p['device_name']}, {args.dtype}, {p['threads']} threads"
    written = [] if args.no_plot else plot_shapes(rows, out_dir / stem, title)
    print(
        f"bench: wrote {json_path}, {out_dir / (stem + '.md')}, {out_dir / (stem + '-summary.json')}"
        + (f" and {len(written)} plot files ({written[0].name} ...)" if written else ""),
        flush=True,
    )


def _with_prompt_cache(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """``rows`` without the decode rows of the other prompt-cache mode (a results file may hold both
    for one point; a summary reports one)."""
    return [r for r in rows if prompt_cache_of(r) in (None, mode)]


def _paths(args: argparse.Namespace, device_type: str) -> tuple[Path, str, Path]:
    """(output directory, file stem, results JSON path)."""
    out_dir = args.out if args.out is not None else Path("results") / args.profile / "bench"
    stem = args.name or f"{device_type}-{args.dtype}"
    return out_dir, stem, out_dir / f"{stem}.json"


def _fresh(args: argparse.Namespace, json_path: Path) -> None:
    """``--fresh``: move an existing results file aside (never overwritten)."""
    if args.fresh and json_path.exists():
        backup = json_path.with_name(f"{json_path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        json_path.rename(backup)
        print(f"bench: kept the previous results as {backup}", flush=True)


def _given_peaks(args: argparse.Namespace) -> Peaks | None:
    """The roofline's device peaks from ``--peak-tflops`` and ``--peak-bandwidth-gbs`` (both, or none:
    then they are measured by the sweep, or read from the rows)."""
    if args.peak_tflops is None and args.peak_bandwidth_gbs is None:
        return None
    if args.peak_tflops is None or args.peak_bandwidth_gbs is None:
        raise ValueError("give both --peak-tflops and --peak-bandwidth-gbs, or neither (then they are measured)")
    return Peaks(
        args.peak_tflops * 1e12,
        args.peak_bandwidth_gbs * 1e9,
        f"given: {args.peak_tflops:g} TFLOP/s, {args.peak_bandwidth_gbs:g} GB/s",
    )


def _default_mem_budget(device: torch.device) -> int | None:
    total = bench_device.device_ops(device).total_memory()
    if total is not None:  # an accelerator: 90% of its memory
        return int(0.9 * total)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return None
