"""Run the paper's experiments at a profile, write the report, and compare the run with the committed
reference (:func:`reproduce`; the command line is ``python -m harness reproduce``, :mod:`harness.cli.reproduce`).

Where things go (see ``results/README.md``):

* a fresh run writes to ``runs/<profile>/`` (``--results-dir DIR``: ``DIR/<profile>/``): one folder
  per experiment, ``REPORT.md``, ``COMPARE.md``, the training runs under ``runs/`` and everything
  the experiments printed in ``reproduce.log``;
* ``results/<profile>/`` is the committed reference. At the end the run is compared with it
  (:func:`harness.report.compare.compare`) and the verdict printed in one line. Maintainers refresh
  the reference with ``--results-dir results``;
* ``--data PATH`` runs the profile on the user's own corpus into ``runs/data-<corpus hash>/<profile>/``
  (the same layout, apart from the embedded corpus's results); it is not compared with the
  reference, which was made on other data.

Every experiment is validated before anything runs. A finished experiment is recorded in
``<experiment>/meta.json`` with the hash of its definition and the fingerprint of the code that
produced it (:mod:`harness.training.fingerprint`); running again reuses it only when both still match, and
says why when it does not. Every training run inside is reused or resumed (see
:mod:`harness.pipeline.stages`), so the command is idempotent and can be killed and restarted at
any point. ``--dry-run`` prints the plan (runs, tokens, estimated GPU-hours) and what would run,
without running anything (the ``paper`` profile's way to check a cluster job before launching it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from harness.pipeline import stages, standins
from harness.pipeline.progress import Progress, capture_output
from harness.pipeline.runners import PlannedRun, get_runner, load_experiment, runner_params
from harness.pipeline.spec import Experiment, Profile, Teacher, defined_for, load_profile
from harness.scale import memory_plan
from harness.training.fingerprint import Fingerprint, describe_change
from harness.util.io import atomic_write_json, atomic_write_text
from harness.util.provenance import environment

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
#: the GPU the plan's memory and GPU-hours assume (:data:`harness.scale.memory_plan.GPUS`), and how many
PLAN_GPU, PLAN_WORLD = "a100-80gb", 8
#: hex digits of the corpus hash in a ``--data`` run's folder name
DATA_HASH_LENGTH = 10


def ordered(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def gpu_hours(run: PlannedRun) -> float:
    """6 N D training FLOPs on :data:`PLAN_GPU` at 40% utilisation (:func:`harness.scale.memory_plan.gpu_hours`)."""
    return memory_plan.gpu_hours(run.tokens, 6 * run.params, memory_plan.GPUS[PLAN_GPU].bf16_flops)


def say(text: str) -> None:
    """A status line of the pipeline."""
    print(f"[reproduce] {text}", flush=True)


def shown(path: Path) -> str:
    """``path`` relative to the working directory where it is below it (for messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def print_plan(exps: list[Experiment]) -> list[PlannedRun]:
    seen: dict[str, PlannedRun] = {}
    print(f"{'experiment':<20} {'run':<34} {'kind':<9} {'params':>9} {'tokens':>10} {'GPU-h':>8}")
    for exp in exps:
        for r in get_runner(exp).plan(exp, runner_params(exp)):
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
        f"(6·N·D FLOPs on {PLAN_GPU} at 40% of its bf16 peak; evaluation and benchmarks not included)"
    )
    if exps and exps[0].profile.device == "cuda":
        print_memory_plan(exps[0].profile, unique)
    return unique


def plan_shape(t: Teacher) -> dict[str, Any]:
    """A teacher's model config for the memory plan: its own shape, or its published architecture's
    (:mod:`harness.bench.shapes`) for a hub checkpoint."""
    if t.shape:
        return dict(t.shape)
    from harness.bench.shapes import get_shape

    return dict(get_shape(f"{t.name}-model").config)


def print_memory_plan(profile: Profile, runs: list[PlannedRun]) -> None:
    """Memory per GPU for DDP, ZeRO-2, FSDP and ZeRO-3, with and without activation checkpointing, the
    fewest GPUs that hold it and the GPU-hours, once per model the plan trains (memory does not depend
    on tokens; the GPU-hours are for all of that model's runs)."""
    models: dict[tuple[str, str], float] = {}
    for r in runs:
        if r.teacher:
            models[(r.teacher, r.method)] = models.get((r.teacher, r.method), 0.0) + r.tokens
    world = PLAN_WORLD
    for (teacher, method), tokens in models.items():
        t = profile.teacher(teacher)
        print()
        for line in memory_plan.plan_lines(
            plan_shape(t),
            method,
            tokens=tokens,
            block_size=profile.block_size,
            micro_batch=1,
            grad_accum=max(1, profile.batch_size // world),
            world_size=world,
            precision="bf16-mixed",
            gpu=PLAN_GPU,
            options=profile.method_options.get(method),
            label=f"{teacher} -> {method}",
        ):
            print(line)


@functools.lru_cache(maxsize=8)
def corpus_record(spec: str) -> dict[str, Any]:
    """What identifies a profile's corpus (hash, documents, bytes), recorded with every result; the
    hub's streamed datasets are named, not read."""
    if spec.startswith("hf:"):
        return {"spec": spec}
    from harness.data.corpus import load_corpus

    meta = load_corpus(spec).meta
    return {"spec": spec, **{k: meta.get(k) for k in ("hash", "files", "bytes", "python")}}


def definition_hash(exp: Experiment) -> str:
    """What an experiment's results are keyed on besides the code: its name, runner, parameters and
    profile (stand-ins as ``standin:<name>``, not the local folder they were made in)."""
    prof = dataclasses.asdict(standins.unresolve(exp.profile))
    return stages.config_key([exp.name, exp.runner, exp.params, prof])


def code_fingerprint(exp: Experiment) -> Fingerprint:
    """The fingerprint of the code an experiment's results depend on (:meth:`Runner.code_fingerprint`)."""
    return get_runner(exp).code_fingerprint(exp, runner_params(exp))


def why_run(exp: Experiment, out: Path, force: bool = False) -> str | None:
    """Why experiment ``exp`` must run into ``out`` (None: its results there are up to date)."""
    meta_path = out / "meta.json"
    if not meta_path.exists():
        return "not run yet"
    if force:
        return "--force"
    meta = stages.read_json(meta_path)
    if meta.get("definition_hash") != definition_hash(exp):
        return f"its definition changed (experiments/{exp.name}.yaml or profile {exp.profile.name!r})"
    if "code_fingerprint" not in meta:
        return "made by a version of the suite that recorded no code fingerprint"
    code = code_fingerprint(exp)
    if meta["code_fingerprint"] != code.digest:
        return f"the code changed ({describe_change(code.changed_files(meta.get('code_files')))})"
    missing = [t for t in meta.get("tables", []) if not (out / f"{t}.csv").exists()]
    if missing:
        return f"output missing ({', '.join(f'{t}.csv' for t in missing)})"
    return None


def heldout_text(profile: Profile) -> str | None:
    """The text a profile scores held-out bits per byte on, in words (``the whole test split (35
    documents, 701,863 bytes)``); None where it scores no held-out text."""
    if "heldout_ppl" not in (profile.eval.get("tasks") or []):
        return None
    from harness.pipeline.runners.whole_split import sample_description, sample_size

    return f"{sample_description(profile)} ({sample_size(profile)})"


def run_experiment(
    exp: Experiment, ctx: stages.Context, force: bool = False, notes: tuple[str, ...] = (), tag: str | None = None
) -> bool:
    """Run ``exp`` into ``ctx.root/<name>/`` unless it is up to date there; True if it ran.
    ``notes`` go into its ``meta.json`` (and the report); ``tag`` names it in status lines."""
    out = ctx.root / exp.name
    tag = tag or exp.name
    show = ctx.monitor.say if ctx.monitor is not None else print
    reason = why_run(exp, out, force)
    if reason is None:
        show(f"[reproduce] {tag}: up to date ({shown(out)})")
        return False
    eta = f" — ETA {ctx.monitor.eta()}" if ctx.monitor is not None else ""
    what = f"running ({exp.paper_ref})" if reason == "not run yet" else f"re-running: {reason}"
    show(f"[reproduce] {tag}: {what}{eta}")
    marker = out / ".running.json"
    key, code = definition_hash(exp), code_fingerprint(exp)
    # an earlier complete result (stale or forced), or an interrupted attempt with other code: its
    # resumable state must not be continued
    fresh = (out / "meta.json").exists() or (
        marker.exists() and stages.read_json(marker) != {"definition_hash": key, "code_fingerprint": code.digest}
    )
    atomic_write_json(marker, {"definition_hash": key, "code_fingerprint": code.digest})
    (out / "meta.json").unlink(missing_ok=True)  # until it is complete again, it is not up to date
    start = time.time()
    output = get_runner(exp).run(exp, runner_params(exp), dataclasses.replace(ctx, fresh=fresh))
    for name, frame in output.tables.items():
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
        if name == "table":
            atomic_write_text(out / "table.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_json(
        out / "meta.json",
        {
            "experiment": exp.name,
            "paper_ref": exp.paper_ref,
            "description": exp.description,
            "profile": exp.profile.name,
            "params": exp.params,
            "definition_hash": key,
            "code_fingerprint": code.digest,
            "code_files": code.files,
            "tables": sorted(output.tables),
            "wall_time_s": round(time.time() - start, 1),
            "figures": [str(f.relative_to(out)) for f in output.figures],
            "notes": [*notes, *output.notes],
            "environment": environment(device="cuda" if torch.cuda.is_available() else "cpu"),
            "corpus": corpus_record(exp.profile.data),
        },
    )
    marker.unlink(missing_ok=True)
    show(f"[reproduce] {tag}: done in {time.time() - start:.0f}s")
    return True


def reference_verdict(ref: Path, root: Path, exps: list[Experiment]) -> str:
    """Compare the run in ``root`` with the reference ``ref`` (:func:`harness.report.compare.compare`),
    write ``root/COMPARE.md`` and return the verdict as one line. It also says which of ``exps``
    the reference holds from other code or definitions than the run's (a stale reference)."""
    from harness.report.compare import compare

    frame, ok = compare(ref, root)
    if frame.empty:
        return f"nothing to compare with the reference {shown(ref)}: no experiment with a table.csv in both"
    stale = {e.name: why_run(e, ref / e.name) for e in exps if (ref / e.name / "meta.json").exists()}
    stale = {name: reason for name, reason in stale.items() if reason is not None}
    text = frame.to_markdown(index=False, floatfmt=".4g")
    agree = "agree up to their noise" if ok else "are not shown to agree (see the verdicts below)"
    older = "".join(f"- {name}: {reason}\n" for name, reason in stale.items())
    if older:
        older = f"The reference of these experiments was made otherwise than this run's:\n\n{older}\n"
    path = atomic_write_text(
        root / "COMPARE.md",
        f"Comparing {shown(ref)} (A, the committed reference) with {shown(root)} (B, this run): the runs "
        f"{agree}.\n\n(`python -m harness compare {shown(ref)} {shown(root)}` prints this again.)\n\n{older}{text}\n",
    )
    verdicts = frame["verdict"]
    judged = int(verdicts.isin(["within seed noise", "DIFFERS"]).sum())
    same = (frame["max |A-B|"] == 0) | (verdicts == "identical")
    differs = frame[verdicts == "DIFFERS"]
    unjudged = frame[(verdicts == "no noise estimate") & ~same]
    unmatched = sorted(set(frame.loc[frame["rows"] != frame["of"], "experiment"]))
    parts = []
    if len(differs):
        which = [f"{e}: {m}" for e, m in zip(differs["experiment"], differs["metric"])]
        parts.append(
            f"does NOT agree: {len(differs)} of {judged} metrics beyond their noise ({describe_change(which)})"
        )
    if unmatched:
        parts.append(f"rows unmatched in {', '.join(unmatched)}")
    if len(unjudged):
        which = [f"{e}: {m}" for e, m in zip(unjudged["experiment"], unjudged["metric"])]
        parts.append(f"{len(unjudged)} metric(s) differ with no noise estimate to judge by ({describe_change(which)})")
    counts = f"{judged} metrics judged, {int(same.sum())} of {len(frame)} identical"
    if parts:
        verdict = "; ".join(parts) + f" ({counts})"
    elif judged:
        verdict = f"agrees up to its noise ({counts})"
    else:
        verdict = f"every row matches and every metric is identical ({counts}; nothing needed a noise estimate)"
    if stale:
        verdict += f"; the reference of {len(stale)} experiment(s) predates this code or definition"
    return f"compared with the reference {shown(ref)}: {verdict}; details: {shown(path)}"


def _estimates(names: list[str], roots: list[Path]) -> dict[str, float]:
    """An earlier wall time per experiment: from the first of ``roots`` that has its ``meta.json``."""
    found: dict[str, float] = {}
    for name in names:
        for root in roots:
            meta = root / name / "meta.json"
            if meta.is_file():
                found[name] = float(stages.read_json(meta).get("wall_time_s") or 0)
                break
    return found


def reproduce(
    profile_name: str,
    only: list[str] | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
    results_dir: Path = stages.RUNS_DIR,
    data: str | None = None,
    verbose: bool = False,
    progress: bool = False,
) -> int:
    """Validate every experiment (``only`` these), then run them (or with ``dry_run`` print the plan),
    write the report and compare the run with the committed reference; see the module docstring.
    ``force``: re-run up-to-date experiments; ``data``: the user's corpus instead of the profile's;
    ``verbose``: the experiments' output here, not in the log; ``progress``: each training run's bar."""
    profile: Profile = load_profile(profile_name)
    own_data = profile.data
    notes: tuple[str, ...] = ()
    if data:
        from harness.data.corpus import load_corpus

        spec = data if data.startswith("hf:") else str(Path(data).expanduser().resolve())
        corpus = load_corpus(spec)  # a clear CorpusError (exit status 2) when it cannot be read
        results_dir = results_dir / f"data-{corpus.meta['hash'][:DATA_HASH_LENGTH]}"
        notes = (
            f"Trained and evaluated on the user's corpus {spec} (hash {corpus.meta['hash'][:12]}, "
            f"{corpus.meta.get('files')} documents), not the profile's own ({profile.data}).",
        )
        profile = dataclasses.replace(profile, data=spec)
    standin_profile = None  # a profile of local stand-ins (paper-offline): their paths now, made before running
    if standins.referenced(profile):
        standin_profile, profile = profile, standins.resolve(profile, results_dir / profile.name)
    names = only or defined_for(profile.name)
    exps = [load_experiment(n, profile) for n in ordered(list(dict.fromkeys(names)))]  # validates all first
    ctx = stages.Context(profile, results_dir=results_dir, progress=progress)
    say(f"profile {profile.name}: {profile.description}")
    if data:
        say(f"corpus: {profile.data} (instead of {own_data})")
    say(f"experiments: {', '.join(e.name for e in exps)}")
    say(f"run folder: {shown(ctx.root)}")
    if standin_profile is not None:
        say(f"stand-ins: {', '.join(standins.referenced(standin_profile))} in {shown(standins.folder(ctx.root))}")
    if dry_run:
        print_plan(exps)
        print()
        for exp in exps:
            reason = why_run(exp, ctx.root / exp.name, force)
            say(f"{exp.name}: {'up to date' if reason is None else 'would run: ' + reason}")
        return 0
    stages.profile_device(profile)  # a CUDA profile without CUDA: one line naming the CPU profiles
    start = time.time()
    if standin_profile is not None:
        standins.prepare(standin_profile, ctx.root, log=say)  # the missing ones
    ran = _run_all(exps, ctx, notes, force=force, verbose=verbose or progress, bars=progress)
    from harness.report.report import write_report

    shipped = {t.name: t.shipped for t in profile.teachers.values() if t.shipped}
    report = write_report(profile.name, results_dir, defined_for(profile.name), shipped, heldout_text(profile))
    reused = len(exps) - ran
    say(f"finished in {time.time() - start:.0f}s: {ran} experiment(s) ran, {reused} reused; report: {shown(report)}")
    ref = stages.RESULTS_DIR / profile.name
    if data:
        say(
            f"not compared with the reference {shown(ref)}: it was made on the profile's own corpus "
            f"({own_data}), this run on {profile.data}"
        )
    elif not ref.is_dir():
        say(f"no committed reference {shown(ref)} to compare with")
    elif ref.resolve() == ctx.root.resolve():
        say(f"this run refreshed the committed reference {shown(ref)} itself; nothing to compare it with")
    else:
        say(reference_verdict(ref, ctx.root, exps))
    return 0


def _run_all(
    exps: list[Experiment], ctx: stages.Context, notes: tuple[str, ...], *, force: bool, verbose: bool, bars: bool
) -> int:
    """Run every experiment with one progress display; the rest of the output goes to the log
    unless ``verbose`` (``bars``: the training runs draw their own progress bars). Returns how many ran."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    names = [e.name for e in exps]
    estimates = _estimates(names, [ctx.root, stages.RESULTS_DIR / ctx.profile.name])
    log = ctx.root / "reproduce.log"
    ran, current = 0, ""
    try:
        with _quiet(log, verbose) as (out, _err):
            monitor = Progress(names, estimates, out, live=False if bars else None)  # bars of its own
            ctx = dataclasses.replace(ctx, monitor=monitor)
            if not verbose:
                monitor.say(f"[reproduce] the experiments' own output goes to {shown(log)}")
            try:
                for exp in exps:
                    current = exp.name
                    tag = monitor.begin(exp.name)
                    did = run_experiment(exp, ctx, force=force, notes=notes, tag=tag)
                    monitor.end(exp.name, did)
                    ran += did
            finally:
                monitor.close()
    except BaseException:
        if not verbose and current:
            print(f"[reproduce] {current} stopped; what it printed is in {shown(log)}", file=sys.stderr, flush=True)
        raise
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return ran


def _quiet(log: Path, verbose: bool) -> contextlib.AbstractContextManager[tuple[TextIO, TextIO]]:
    """:func:`capture_output` into ``log``, or nothing when ``verbose``."""
    if verbose:
        return contextlib.nullcontext((sys.stdout, sys.stderr))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        when = dt.datetime.now().isoformat(timespec="seconds")
        f.write(f"\n===== {when} python -m harness reproduce (pid {os.getpid()})\n")
    return capture_output(log)
