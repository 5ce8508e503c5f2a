"""``python -m harness reproduce``: run the paper's experiments at a profile and write the report.

Every experiment is validated before anything runs. Each finished experiment is recorded in
``results/<profile>/<experiment>/meta.json`` with the hash of its definition; running again reuses
it (and every training run inside is reused or resumed, see :mod:`harness.pipeline.stages`), so the
command is idempotent and can be killed and restarted at any point. ``--dry-run`` prints the plan —
runs, tokens, estimated GPU-hours — without running anything (the ``paper`` profile's way to check
a cluster job before launching it).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from harness.io import atomic_write_json, atomic_write_text
from harness.pipeline import stages
from harness.pipeline.runners import RUNNERS, PlannedRun
from harness.pipeline.spec import PROFILES, Experiment, experiment_names, load_experiment, load_profile

#: run order: later experiments reuse the runs of earlier ones
ORDER: tuple[str, ...] = (
    "table2_methods",
    "fig2_curves",
    "fig3_attention_maps",
    "table1_scale",
    "table3_7b",
    "recovery_curve",
    "kernel_ablation",
    "mqar",
    "fig4_speed_memory",
)
#: GPU-hour estimate: 6 N D training FLOPs at this sustained throughput per GPU (A100 bf16 peak
#: 312 TFLOP/s at 40% model-FLOPs utilisation) — an assumption, printed with the plan
SUSTAINED_FLOPS = 0.4 * 312e12


def ordered(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def gpu_hours(run: PlannedRun) -> float:
    return 6 * run.params * run.tokens / SUSTAINED_FLOPS / 3600


def print_plan(exps: list[Experiment]) -> list[PlannedRun]:
    seen: dict[str, PlannedRun] = {}
    print(f"{'experiment':<20} {'run':<34} {'kind':<9} {'params':>9} {'tokens':>10} {'GPU-h':>8}")
    for exp in exps:
        for r in RUNNERS[exp.runner].plan(exp, exp.runner_params()):
            shared = r.label in seen
            seen.setdefault(r.label, r)
            note = " (shared)" if shared else ""
            print(
                f"{exp.name:<20} {r.label:<34} {r.kind:<9} {r.params:>9.3g} {r.tokens:>10.3g} "
                f"{gpu_hours(r):>8.1f}{note}"
            )
    unique = list(seen.values())
    total_tokens = sum(r.tokens for r in unique)
    total_h = sum(gpu_hours(r) for r in unique)
    print(
        f"\n{len(unique)} distinct training runs, {total_tokens:.3g} tokens, about {total_h:,.0f} GPU-hours "
        f"(6·N·D FLOPs at {SUSTAINED_FLOPS / 1e12:.0f} TFLOP/s sustained per GPU, A100-class bf16; evaluation "
        "and benchmarks not included)"
    )
    return unique


def environment() -> dict[str, str]:
    from harness.provenance import commit_label, cpu_model

    return {
        "git_commit": commit_label(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
    }


def definition_hash(exp: Experiment) -> str:
    prof = dataclasses.asdict(exp.profile)
    return stages.config_key([exp.name, exp.runner, exp.params, prof])


def run_experiment(exp: Experiment, ctx: stages.Context, force: bool = False) -> Path:
    out = ctx.root / exp.name
    meta_path = out / "meta.json"
    key = definition_hash(exp)
    if meta_path.exists() and not force and stages.read_json(meta_path).get("definition_hash") == key:
        print(f"[reproduce] {exp.name}: up to date ({out})", flush=True)
        return out
    print(f"[reproduce] {exp.name}: running ({exp.paper_ref})", flush=True)
    start = time.time()
    output = RUNNERS[exp.runner].run(exp, exp.runner_params(), ctx)
    for name, frame in output.tables.items():
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
        if name == "table":
            atomic_write_text(out / "table.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_json(
        meta_path,
        {
            "experiment": exp.name,
            "paper_ref": exp.paper_ref,
            "description": exp.description,
            "profile": exp.profile.name,
            "params": exp.params,
            "definition_hash": key,
            "wall_time_s": round(time.time() - start, 1),
            "figures": [str(f.relative_to(out)) for f in output.figures],
            "notes": output.notes,
            "environment": environment(),
        },
    )
    print(f"[reproduce] {exp.name}: done in {time.time() - start:.0f}s", flush=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="tiny", choices=PROFILES, help="scale to run at (default: tiny)")
    parser.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="run only these experiments")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    parser.add_argument("--force", action="store_true", help="re-run experiments even if up to date")
    parser.add_argument("--results-dir", type=Path, default=stages.RESULTS_DIR, help="where results/ is")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    names = args.only or experiment_names()
    exps = [load_experiment(n, profile) for n in ordered(names)]  # validates every definition first
    print(f"[reproduce] profile {profile.name}: {profile.description}")
    print(f"[reproduce] experiments: {', '.join(e.name for e in exps)}")
    if args.dry_run:
        print_plan(exps)
        return 0
    if profile.device == "cuda" and not torch.cuda.is_available():
        print(
            f"[reproduce] profile {profile.name!r} needs CUDA GPUs (run it under `accelerate launch` on a GPU "
            "machine); use --dry-run here to check its plan.",
            file=sys.stderr,
        )
        return 2
    ctx = stages.Context(profile, results_dir=args.results_dir, progress=args.progress)
    start = time.time()
    for exp in exps:
        run_experiment(exp, ctx, force=args.force)
    from harness.report.report import write_report

    report = write_report(profile.name, args.results_dir)
    print(f"[reproduce] finished in {time.time() - start:.0f}s; report: {report}")
    return 0


def summary_frame(results_dir: Path, profile: str) -> pd.DataFrame:
    """meta.json of every finished experiment of a profile, one row each."""
    rows = []
    for meta in sorted((results_dir / profile).glob("*/meta.json")):
        m = stages.read_json(meta)
        rows.append({k: m.get(k) for k in ("experiment", "paper_ref", "wall_time_s")})
    return pd.DataFrame(rows)
